"""The web service: a FastAPI app (REST API, web page, metrics) over one collection.

Needs the ``service`` extra (fastapi, uvicorn, python-multipart). Start it with
``cbir serve``; build it in code with ``create_app(ServiceConfig(collection=...))``.
"""

from cbir.service.config import ServiceConfig

__all__ = ["ServiceConfig", "create_app"]


def create_app(config: ServiceConfig):  # noqa: ANN201 - FastAPI is an optional dependency
    """The FastAPI app for ``config`` (imports FastAPI only when called)."""
    from cbir.service.app import create_app as _create

    return _create(config)
