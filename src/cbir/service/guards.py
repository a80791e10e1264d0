"""ASGI guards in front of the routes: request size, Host header, cross-origin writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir.service.errors import ApiError

UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


async def _send_json(send: Send, status: int, error: str, detail: str) -> None:
    body = json.dumps({"error": error, "detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


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

    def __init__(self, app: ASGIApp, allowed_hosts: list[str] | None):
        self.app = app
        self.allowed = None if allowed_hosts is None else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers") or []}
        host = headers.get("host", "")
        if self.allowed is not None and _host_name(host).lower() not in self.allowed:
            await _send_json(send, 421, "unknown_host",
                             f"this server answers to {', '.join(sorted(self.allowed))}, not {host!r}; "
                             "open it by that name")
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
