"""``create_app(config)``: the FastAPI application (API, web page, metrics)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir import __version__
from cbir.service.config import ServiceConfig
from cbir.service.errors import install_error_handlers
from cbir.service.guards import BodyLimitMiddleware, OriginGuardMiddleware, ReadTokenMiddleware
from cbir.service.metrics import MetricsMiddleware
from cbir.service.page_routes import router as page_router
from cbir.service.routes import router
from cbir.service.scene_routes import router as scene_router
from cbir.service.state import ServiceState

log = logging.getLogger("cbir.service")

STATIC = Path(__file__).with_name("static")
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
UPLOAD_PATHS = ("/api/train-jobs/upload",)
#: where the Swagger UI and ReDoc files are served from (they come with the fastapi-offline package)
DOCS_ASSETS = "/docs-assets"
#: the API docs pages load nothing from other sites (Swagger UI's page needs its inline script)
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
            "script-src 'self' 'unsafe-inline'; worker-src 'self' blob:; connect-src 'self'; "
            "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


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


def docs_assets_dir() -> Path | None:
    """The folder with swagger-ui-bundle.js, swagger-ui.css and redoc.standalone.js, if installed."""
    try:
        import fastapi_offline
    except ImportError:
        return None
    folder = Path(fastapi_offline.__file__).with_name("static")
    names = ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js")
    return folder if all((folder / n).is_file() for n in names) else None


def add_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc served from local files, so they work offline.

    Without the fastapi-offline package the pages fall back to FastAPI's CDN links.
    """
    assets = docs_assets_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"
    if assets is not None:
        app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")
    else:
        log.warning("the fastapi-offline package is missing: /docs and /redoc load their scripts from a "
                    "CDN (pip install 'cbir[service]')")
    local = {} if assets is None else {"swagger_js_url": f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                        "swagger_css_url": f"{DOCS_ASSETS}/swagger-ui.css",
                                        "swagger_favicon_url": f"{DOCS_ASSETS}/favicon.png"}
    headers = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache"} if assets else {}

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{app.title} - API docs",
            oauth2_redirect_url=root + redirect_url,
            swagger_ui_parameters=app.swagger_ui_parameters, init_oauth=app.swagger_ui_init_oauth,
            **{k: root + v for k, v in local.items()})
        page.headers.update(headers)
        return page

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        extra = {} if assets is None else {
            "redoc_js_url": f"{root}{DOCS_ASSETS}/redoc.standalone.js",
            "redoc_favicon_url": f"{root}{DOCS_ASSETS}/favicon.png", "with_google_fonts": False}
        page = get_redoc_html(openapi_url=root + openapi_url, title=f"{app.title} - ReDoc", **extra)
        page.headers.update(headers)
        return page


def create_app(config: ServiceConfig) -> FastAPI:
    """Build the app for ``config``; jobs start and stop with the app's lifespan."""
    state = ServiceState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = config.request_threads or 2
        state.start()
        try:
            yield
        finally:
            state.stop()

    app = FastAPI(
        title="cbir", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        description="Content-based image retrieval: search by example image, index folders in the "
                    "background, maintain the index. Errors are JSON {error, detail}. Mutating "
                    "endpoints need 'Authorization: Bearer TOKEN' when the server has tokens; on a "
                    "server bound to a non-loopback address every endpoint but /api/health, the "
                    "page and the docs needs it (unless started with --public-read).",
    )
    app.state.cbir = state
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(scene_router)
    app.include_router(page_router)
    add_docs(app)

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
    if config.reads_need_token:
        app.add_middleware(ReadTokenMiddleware, token_hashes=config.token_hashes)
    app.add_middleware(OriginGuardMiddleware, allowed_hosts=config.allowed_hosts,
                       accept_local_address=config.wildcard_bind)
    app.add_middleware(HeadersMiddleware)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    return app
