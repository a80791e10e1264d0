"""Property-based fuzzing of every operation from the OpenAPI schema (schemathesis): no 5xx.

A short run for the test suite (a few cases per operation, derandomized); the long run is
``python bench/bench_service.py --fuzz 300``.
"""

from __future__ import annotations

import pytest

from conftest import needs_service

needs_service()
schemathesis = pytest.importorskip("schemathesis", reason="fuzzing needs schemathesis (pip install it)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

EXAMPLES = 6


def without_lifespan(app):
    """The app without its lifespan: schemathesis opens a client per case, the fixture runs the app."""

    async def wrapper(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        await app(scope, receive, send)

    return wrapper


def test_no_server_errors(client):
    schema = schemathesis.openapi.from_asgi("/openapi.json", without_lifespan(client.app))
    ran: dict[str, int] = {}

    def fuzz(op) -> None:
        @given(case=op.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def check(case) -> None:
            ran[op.label] = ran.get(op.label, 0) + 1
            case.call_and_validate(checks=[not_a_server_error])

        check()

    for result in schema.get_all_operations():
        fuzz(result.ok())
    assert len(ran) >= 20, ran  # every operation was exercised
