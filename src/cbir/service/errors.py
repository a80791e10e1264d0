"""Every error the API returns is JSON ``{"error": code, "detail": what to fix}``.

Library errors (``cbir.errors``) map to 4xx; anything unexpected is a 500 whose detail
points at the server log, never a traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cbir.errors import (
    BackendUnavailable,
    CbirError,
    CollectionError,
    IndexMismatch,
    InvalidImage,
    InvalidRequest,
    UnknownComponent,
)

log = logging.getLogger("cbir.service")


class ApiError(StarletteHTTPException):
    """An HTTP error with a machine-readable code and a human detail."""

    def __init__(self, status: int, error: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.error = error


def error_body(error: str, detail: Any) -> dict[str, Any]:
    return {"error": error, "detail": detail}


def _code(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def cbir_error_status(e: CbirError) -> tuple[int, str]:
    """HTTP status and code for a library error (the most specific class first)."""
    from cbir.service.safezip import UnsafeArchive
    from cbir.service.security import PathRefused

    for cls, status, code in (
        (PathRefused, 403, "path_not_allowed"),
        (UnsafeArchive, 400, "unsafe_archive"),
        (InvalidImage, 422, "invalid_image"),
        (UnknownComponent, 400, "unknown_component"),
        (InvalidRequest, 400, "invalid_request"),
        (IndexMismatch, 409, "index_mismatch"),
        (CollectionError, 409, "collection_error"),
        (BackendUnavailable, 501, "backend_unavailable"),
    ):
        if isinstance(e, cls):
            return status, code
    return 400, "cbir_error"


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(x) for x in loc]
    where = {"query": "query parameter", "body": "body field", "path": "path parameter",
             "header": "header", "form": "form field"}
    if parts and parts[0] in where:
        return f"{where[parts[0]]} {'.'.join(parts[1:]) or '(whole body)'}"
    return ".".join(parts)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path (a path can have several routes)."""
    from starlette.routing import Match

    methods: set[str] = set()
    routes = getattr(request.app.state, "plain_routes", None) or request.app.routes
    for route in routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] != Match.NONE:
            methods |= set(route_methods)
    return sorted(methods)


#: how to fix a bad request, by endpoint path
HINTS = {"/api/index/clear": 'send {"confirm": true} to remove every image from the collection'}


def validation_detail(exc: RequestValidationError, path: str = "") -> str:
    msgs = []
    for err in exc.errors()[:10]:
        msgs.append(f"{_location(err.get('loc', ()))}: {err.get('msg', 'invalid')}")
    if path in HINTS:
        msgs.append(HINTS[path])
    return "; ".join(msgs) or "the request is invalid"


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error handlers on ``app``."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.error, exc.detail), status_code=exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = _allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            detail = (f"{request.method} is not allowed on {request.url.path}; use "
                      f"{' or '.join(allowed) or 'another path'} (see /docs)")
        return JSONResponse(error_body(_code(exc.status_code), detail), status_code=exc.status_code,
                            headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = validation_detail(exc, request.url.path)
        return JSONResponse(error_body("invalid_request", detail), status_code=422)

    @app.exception_handler(CbirError)
    async def _cbir(request: Request, exc: CbirError) -> JSONResponse:
        status, code = cbir_error_status(exc)
        return JSONResponse(error_body(code, str(exc)), status_code=status)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", f"{type(exc).__name__}: the server hit an "
                                       "unexpected error; see the server log"), status_code=500)
