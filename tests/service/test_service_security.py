"""Tokens (hashed, constant-time compare), allowed roots, and the serve command's checks."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from cbir.commands import serve
from cbir.errors import InvalidRequest
from cbir.service.security import (
    PathRefused,
    hash_token,
    load_token_hashes,
    parse_token_lines,
    resolve_under_roots,
    token_matches,
    write_token_file,
)


def test_token_hashes_and_matching(tmp_path):
    f = tmp_path / "tokens"
    token = write_token_file(f)
    assert len(token) >= 40 and token not in f.read_text()
    assert oct(f.stat().st_mode & 0o777) == "0o600"
    hashes = load_token_hashes(f, env={})
    assert hashes == [hash_token(token)]
    assert token_matches(token, hashes)
    assert not token_matches(token + "x", hashes) and not token_matches("", hashes)
    assert not token_matches(None, hashes)
    with pytest.raises(FileExistsError):
        write_token_file(f)


def test_token_file_lines_and_env(tmp_path):
    plain = "a-plain-token-of-enough-length"
    lines = ["# comment", "", hash_token("other-token-0000000"), plain]
    assert parse_token_lines(lines) == [hash_token("other-token-0000000"), hash_token(plain)]
    with pytest.raises(InvalidRequest, match="at least"):
        parse_token_lines(["short"])
    with pytest.raises(InvalidRequest, match="64 hex"):
        parse_token_lines(["sha256:xyz"])
    assert load_token_hashes(None, env={"CBIR_API_TOKEN": plain}) == [hash_token(plain)]
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(InvalidRequest, match="no token"):
        load_token_hashes(empty, env={})
    with pytest.raises(InvalidRequest, match="cannot read"):
        load_token_hashes(tmp_path / "missing", env={})


def test_resolve_under_roots(tmp_path):
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    (root / "link-out").symlink_to(tmp_path / "outside")
    (root / "link-in").symlink_to(root / "a")
    assert resolve_under_roots(str(root / "a" / "b"), [root]) == root / "a" / "b"
    assert resolve_under_roots("a/b", [root]) == root / "a" / "b"
    assert resolve_under_roots("a/b/../..", [root]) == root
    assert resolve_under_roots("link-in", [root]) == root / "a"
    assert resolve_under_roots("nothing-yet", [root]) == root / "nothing-yet"
    for bad in ("..", "a/../../outside", str(tmp_path / "outside"), "link-out", "/", str(tmp_path / "root2")):
        with pytest.raises(PathRefused):
            resolve_under_roots(bad, [root])
    with pytest.raises(PathRefused, match="--allow-root"):
        resolve_under_roots("a", [])
    with pytest.raises(InvalidRequest):
        resolve_under_roots("a\x00b", [root])


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--collection", type=Path, default=None)
    sub = p.add_subparsers(dest="command", required=True)
    serve.register(sub, argparse.ArgumentParser)
    return p.parse_args(list(argv))


def test_serve_arguments_and_config(tmp_path):
    args = _args("--collection", str(tmp_path / "c"), "serve", "--allow-root", str(tmp_path))
    cfg = serve.build_config(args)
    assert cfg.collection == tmp_path / "c" and cfg.allow_roots == [tmp_path.resolve()]
    assert cfg.token_hashes == [] and "127.0.0.1" in cfg.allowed_hosts
    args = _args("serve", "--collection", str(tmp_path / "d"), "--port", "0")
    assert serve.build_config(args).collection == tmp_path / "d"


def test_serve_refuses_public_bind_without_token(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("CBIR_API_TOKEN", raising=False)
    with pytest.raises(InvalidRequest, match="token"):
        serve.build_config(_args("serve", "--host", "0.0.0.0", "--collection", str(tmp_path)))
    with pytest.raises(InvalidRequest, match="no such folder"):
        serve.build_config(_args("serve", "--allow-root", str(tmp_path / "nope")))
    tf = tmp_path / "tok"
    assert serve.cmd_serve(_args("serve", "--create-token", str(tf))) == 0
    token = capsys.readouterr().out.strip()
    cfg = serve.build_config(_args("serve", "--host", "0.0.0.0", "--token-file", str(tf),
                                   "--collection", str(tmp_path)))
    assert cfg.token_hashes == [hash_token(token)] and "0.0.0.0" not in cfg.allowed_hosts
    assert "localhost" in cfg.allowed_hosts and cfg.reads_need_token
    monkeypatch.setenv("CBIR_API_TOKEN", "env-token-long-enough-123")
    cfg = serve.build_config(_args("serve", "--host", "::", "--collection", str(tmp_path)))
    assert cfg.token_hashes == [hash_token("env-token-long-enough-123")]


def test_loopback_detection():
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert serve.is_loopback("127.5.6.7")
    assert not any(serve.is_loopback(h) for h in ("0.0.0.0", "::", "example.org", "10.0.0.1"))


def test_serve_main_reports_errors_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CBIR_API_TOKEN", raising=False)
    assert serve.main(["--host", "0.0.0.0", "--collection", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cbir: error:") and err.count("\n") == 1
    assert os.path.isdir(tmp_path)
