"""``create_app(config)``: the FastAPI application (API, web page, metrics)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir import __version__
from cbir.service.config import ServiceConfig
from cbir.service.errors import install_error_handlers
from cbir.service.guards import BodyLimitMiddleware, OriginGuardMiddleware
from cbir.service.metrics import MetricsMiddleware
from cbir.service.routes import router
from cbir.service.state import ServiceState

STATIC = Path(__file__).with_name("static")
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
UPLOAD_PATHS = ("/api/train-jobs/upload",)


class HeadersMiddleware:
    """Add nosniff and a referrer policy to every response."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapper)


def create_app(config: ServiceConfig) -> FastAPI:
    """Build the app for ``config``; jobs start and stop with the app's lifespan."""
    state = ServiceState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import os

        import anyio.to_thread

        threads = int(os.environ.get("CBIR_REQUEST_THREADS", config.request_threads))
        anyio.to_thread.current_default_thread_limiter().total_tokens = max(1, threads)
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="cbir", version=__version__, lifespan=lifespan,
        description="Content-based image retrieval: search by example image, index folders in the "
                    "background, maintain the index. Errors are JSON {error, detail}. Mutating "
                    "endpoints need 'Authorization: Bearer TOKEN' when the server has tokens.",
    )
    app.state.cbir = state
    install_error_handlers(app)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html",
                            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    # the routes themselves (include_router may wrap them), for the Allow header of 405s
    app.state.plain_routes = [*router.routes, *(r for r in app.routes if getattr(r, "methods", None))]

    def limit_for(path: str) -> int:
        return config.max_zip_bytes if path in UPLOAD_PATHS else config.max_upload_bytes

    # outermost last: metrics see every request, guards run before any body is read
    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(OriginGuardMiddleware, allowed_hosts=config.allowed_hosts)
    app.add_middleware(HeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
