"""Shared pytest setup: make helper modules in tests/ (e.g. ``badfiles``) importable."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


# ----------------------------------------------------------------------------- Milvus

@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a real Milvus standalone server (PyPI package ``milvus``) shared by the session.

    Started on free local ports with its data in a temp dir, stopped (process group killed)
    at the end. Also exported as $CBIR_MILVUS_URI so the ``milvus`` backends and CLI
    subprocesses find it. If it cannot start: FAIL under CI=true, SKIP otherwise.
    """
    from milvus_server import start_milvus

    try:
        if importlib.util.find_spec("pymilvus") is None:
            raise RuntimeError("pymilvus (the client, extra 'milvus') is not installed")
        server = start_milvus(tmp_path_factory.mktemp("milvus"))
    except Exception as e:  # noqa: BLE001 - the package is missing, or the server did not come up
        msg = f"no Milvus server for the milvus tests: {e}"
        if os.environ.get("CI") == "true":
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    before = os.environ.get("CBIR_MILVUS_URI")
    os.environ["CBIR_MILVUS_URI"] = server.uri
    try:
        yield server.uri
    finally:
        if before is None:
            os.environ.pop("CBIR_MILVUS_URI", None)
        else:
            os.environ["CBIR_MILVUS_URI"] = before
        server.stop()
