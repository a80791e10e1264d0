"""ASGI guards in front of the routes: request size, Host header, cross-origin writes, and
the token for reads on a server other machines can reach."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir.service.errors import ApiError
from cbir.service.security import token_matches

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
#: what stays public when reads need a token: liveness, the page (it asks for the token) and docs
PUBLIC_PATHS = frozenset({"/", "/api/health", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                          "/redoc", "/favicon.ico"})
PUBLIC_PREFIXES = ("/static/", "/docs-assets/")


async def _send_json(send: Send, status: int, error: str, detail: str,
                     headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


def presented_token(headers: dict[str, str]) -> str | None:
    """The token of ``Authorization: Bearer TOKEN`` or ``X-API-Token`` (never the query string)."""
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-token")


class ReadTokenMiddleware:
    """Every request but PUBLIC_PATHS needs a valid token (used when reads need one)."""

    def __init__(self, app: ASGIApp, token_hashes: list[str]):
        self.app = app
        self.hashes = list(token_hashes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        token = presented_token(headers)
        if not token_matches(token, self.hashes):
            await _send_json(
                send, 401, "unauthorized",
                "this server is reachable from other machines, so reads need the API token too: "
                "send 'Authorization: Bearer TOKEN' (the token printed by `cbir serve --create-token`)"
                if not token else "the API token is not valid",
                headers=[(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)


class BodyTooLarge(ApiError):
    def __init__(self, limit: int):
        super().__init__(413, "payload_too_large",
                         f"the request body is larger than the limit of {limit} bytes; "
                         "send a smaller image (or start the server with a larger --max-upload-mb)")


class BodyLimitMiddleware:
    """Refuse bodies over ``limit_for(path)`` bytes: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int]):
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                await _send_json(send, 400, "bad_request", "Content-Length is not a number")
                return
            if n > limit:
                await _send_json(send, 413, "payload_too_large", BodyTooLarge(limit).detail)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited, send)


def _host_name(host: str) -> str:
    """``example.org:8000`` -> ``example.org``; ``[::1]:80`` -> ``[::1]``."""
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class OriginGuardMiddleware:
    """Refuse unknown Host headers (DNS rebinding) and cross-site writes (CSRF from other pages).

    A write (POST, PUT, PATCH, DELETE) that a browser marks as coming from another origin
    (``Origin`` differs from ``Host``, or ``Sec-Fetch-Site: cross-site``) is refused: the
    page served by this server and non-browser clients (curl, scripts) are unaffected.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None, accept_local_address: bool = False):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}
        #: also accept the address the connection came in on (a server bound to 0.0.0.0 or ::
        #: is opened as http://<one of its addresses>:port/; a rebinding page sends a name)
        self.accept_local_address = accept_local_address

    def _local_names(self, scope: Scope) -> set[str]:
        server = scope.get("server")
        if not self.accept_local_address or not server or not server[0]:
            return set()
        addr = str(server[0]).lower()
        names = {addr, f"[{addr}]"}
        try:
            mapped = getattr(ipaddress.ip_address(addr), "ipv4_mapped", None)
        except ValueError:
            return names
        if mapped is not None:  # a dual-stack socket reports 192.0.2.1 as ::ffff:192.0.2.1
            names.add(str(mapped))
        return names

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host", "")
        if self.allowed is not None and _host_name(host).lower() not in self.allowed \
                and _host_name(host).lower() not in self._local_names(scope):
            await _send_json(send, 421, "unknown_host",
                             f"this server answers to {', '.join(sorted(self.allowed))}, not {host!r}; "
                             "open it by that name (or start the server with --allowed-host NAME)")
            return
        if scope.get("method") in UNSAFE_METHODS:
            origin = headers.get("origin")
            site = headers.get("sec-fetch-site")
            cross = site == "cross-site"
            if origin and origin != "null":
                cross |= urlsplit(origin).netloc.lower() != host.lower()
            elif origin == "null":
                cross = True
            if cross:
                await _send_json(send, 403, "cross_origin_refused",
                                 "writes are only accepted from this server's own page or from "
                                 "non-browser clients")
                return
        await self.app(scope, receive, send)
