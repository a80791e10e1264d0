"""How ``cbir serve`` runs uvicorn: JSON 400s for malformed requests, no tokens in the access log.

uvicorn parses the request line and headers itself (httptools or h11) and answers a request
it cannot parse (a bad request line, a ``Content-Length`` that is not a number, a header
line without a colon) with a plain-text 400 before the application ever sees it. No ASGI
middleware can change that answer, so ``json_400_protocol()`` subclasses uvicorn's HTTP
protocol and overrides ``send_400_response``, the one method that writes it. That method
is uvicorn's internal API (present since 0.11, in both parsers): should a uvicorn release
drop it, the override is simply not called and those 400s are plain text again
(tests/service/test_service_exposure.py notices).

The API never accepts a token in the query string (only ``Authorization: Bearer`` or
``X-API-Token``), but a user may still paste one into a URL: ``RedactTokens`` replaces
the value of ``token``, ``access_token``, ``api_token``, ``api_key`` and ``apikey`` query
parameters in the log lines uvicorn writes.
"""

from __future__ import annotations

import copy
import json
import logging
import re
from typing import Any

#: query parameters whose values never reach the log
TOKEN_IN_QUERY = re.compile(r"(?i)([?&](?:access_token|api_token|api_key|apikey|token)=)[^&#\s\"]*")


class RedactTokens(logging.Filter):
    """Replace token-looking query parameter values in a log record's arguments and message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(TOKEN_IN_QUERY.sub(r"\1REDACTED", a) if isinstance(a, str) else a
                                for a in record.args)
        if isinstance(record.msg, str):
            record.msg = TOKEN_IN_QUERY.sub(r"\1REDACTED", record.msg)
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's default logging setup with RedactTokens on its handlers."""
    from uvicorn.config import LOGGING_CONFIG

    cfg = copy.deepcopy(LOGGING_CONFIG)
    cfg.setdefault("filters", {})["redact_tokens"] = {"()": f"{__name__}.RedactTokens"}
    for handler in cfg.get("handlers", {}).values():
        handler["filters"] = [*handler.get("filters", []), "redact_tokens"]
    return cfg


def json_400_body(msg: str) -> bytes:
    return json.dumps({
        "error": "bad_request",
        "detail": f"{msg.rstrip('.')}: the request line or a header is malformed (for example a "
                  "Content-Length that is not a number); the server closes the connection"}).encode()


def json_400_protocol(base: type | None = None) -> type:
    """uvicorn's HTTP protocol class (``base``, default the one ``http="auto"`` picks) whose
    400 answers to unparsable requests are JSON ``{error, detail}`` like every other error."""
    if base is None:
        from uvicorn.protocols.http.auto import AutoHTTPProtocol as base

    class JsonErrorsProtocol(base):  # type: ignore[misc,valid-type]
        def send_400_response(self, msg: str) -> None:
            body = json_400_body(msg)
            head = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
            self.transport.write(head + body)
            self.transport.close()

    JsonErrorsProtocol.__qualname__ = f"JsonErrors{base.__name__}"
    return JsonErrorsProtocol


def uvicorn_options(log_level: str = "info", access_log: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` / ``uvicorn.Config`` besides app, host and port."""
    return {"http": json_400_protocol(), "log_config": log_config(), "log_level": log_level,
            "access_log": access_log, "server_header": False, "timeout_graceful_shutdown": 5}
