"""CLI conventions (issue 12): global options before or after the command, --json everywhere
(errors too), -f/--filenames, help on every argument, unknown arguments, --version, shell
completion, progress bars only on a terminal. Fast: the cheap ``colorhist`` extractor."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir import __version__, cli
from cbir.cli import build_parser, main

CH = ["--extractor", "colorhist"]
COLOURS = {"red": (200, 30, 30), "green": (30, 180, 40), "blue": (30, 40, 200)}


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    monkeypatch.setenv("CBIR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CBIR_COLLECTION", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse refusing the arguments
        code = e.code if isinstance(e.code, int) else 2
    out, err = capsys.readouterr()
    return code, out, err


def make_classes(root: Path, n: int = 7) -> Path:
    """root/<colour>/<i>.png: noisy 16x16 images around one colour per class."""
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            arr = np.clip(np.array(rgb) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr, "RGB").save(root / name / f"{i}.png")
    return root


@pytest.fixture
def data(tmp_path) -> Path:
    return make_classes(tmp_path / "classes")


@pytest.fixture
def coll(tmp_path, data, capsys) -> str:
    c = str(tmp_path / "coll")
    code, _, err = run(capsys, "-c", c, "index", str(data), *CH, "-q")
    assert code == 0, err
    return c


def query(data: Path) -> str:
    return str(data / "red" / "0.png")


# -- global options before or after the command ----------------------------------------------------
def test_global_options_before_or_after_the_command(capsys, tmp_path, data):
    c = str(tmp_path / "coll")
    code, out, err = run(capsys, "index", str(data), *CH, "-c", c, "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["added"] == 21 and err == ""
    q = query(data)
    code, after, _ = run(capsys, "search", q, "-c", c, "--json", "-k", "4")
    code2, before, _ = run(capsys, "-c", c, "--json", "search", q, "-k", "4")
    assert code == code2 == 0 and json.loads(after) == json.loads(before)
    assert len(json.loads(after)["hits"]) == 4
    # in a nested group, after the group's name or after the command's
    for argv in (["--json", "hash", "methods"], ["hash", "--json", "methods"], ["hash", "methods", "--json"]):
        code, out, _ = run(capsys, "-c", c, *argv)
        assert code == 0 and "itq" in json.loads(out), argv


def test_parsed_globals_and_the_subcommands_own_options():
    p = build_parser()
    a = p.parse_args(["-c", "A", "-q", "--json", "info"])
    assert (a.collection, a.quiet, a.json, a.debug, a.progress) == (Path("A"), True, True, False, False)
    a = p.parse_args(["info"])  # defaults come from the top level when nothing is given
    assert (a.collection, a.quiet, a.json, a.debug, a.progress) == (None, False, False, False, False)
    assert p.parse_args(["-c", "A", "info", "-c", "B"]).collection == Path("B")  # the later one wins
    assert p.parse_args(["-q", "index", "x"]).quiet is True  # not reset by the command's parser
    assert p.parse_args(["eval", "folder", "d", "--debug"]).debug is True
    # serve has its own --collection: both spellings work, neither clashes with the global one
    a = p.parse_args(["serve", "--collection", "S"])
    assert a.serve_collection == Path("S") and a.collection is None
    a = p.parse_args(["serve", "-c", "G", "--port", "0"])
    assert a.collection == Path("G") and a.serve_collection is None
    from cbir.commands.serve import build_config

    assert build_config(p.parse_args(["-c", "G", "serve"])).collection == Path("G")
    assert build_config(p.parse_args(["serve", "-c", "G"])).collection == Path("G")


# -- --json on every command that prints results ------------------------------------------------------
def test_json_on_commands_that_printed_text_only(capsys, coll, data):
    code, out, _ = run(capsys, "-c", coll, "hash", "train", "--method", "lsh", "--bits", "8", "-q", "--json")
    assert code == 0 and json.loads(out)["name"] == "lsh-8"
    code, out, _ = run(capsys, "hash", "list", "-c", coll, "--json")
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["lsh-8"]
    code, out, _ = run(capsys, "hash", "delete", "lsh-8", "-c", coll, "--json")
    assert code == 0 and json.loads(out) == {"deleted": "lsh-8", "codes": 21}
    code, out, _ = run(capsys, "info", "-c", coll, "--json")
    assert code == 0 and json.loads(out)["images"] == 21
    code, out, _ = run(capsys, "verify", "-c", coll, "--json")
    assert code == 0 and json.loads(out)["consistent"]
    code, out, _ = run(capsys, "concepts", "list", "-c", coll, "--json")
    assert code == 0 and json.loads(out) == []
    code, out, err = run(capsys, "remove", str(data / "red"), str(data / "nope"), "-c", coll, "--json")
    assert code == 0 and json.loads(out) == {"removed": 7, "not_in_collection": [str(data / "nope")]}
    assert err == ""


def test_json_on_models_and_concepts_commands(capsys, coll, data):
    pytest.importorskip("torch")
    code, out, err = run(capsys, "-c", coll, "train", str(data), "--name", "rgb", "--epochs", "2",
                         "--head", "linear", "-q", "--json")
    assert code == 0, err
    code, out, _ = run(capsys, "models", "list", "--json", "-c", coll)
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["rgb"]
    code, out, _ = run(capsys, "models", "show", "rgb", "--json", "-c", coll)
    assert code == 0 and json.loads(out)["classes"] == ["blue", "green", "red"]
    code, out, _ = run(capsys, "models", "use", "rgb", "--json", "-c", coll)
    assert code == 0 and json.loads(out) == {"model": "rgb"}
    code, out, _ = run(capsys, "models", "use", "--none", "--json", "-c", coll)
    assert code == 0 and json.loads(out) == {"model": None, "was_using_a_model": True}
    code, out, _ = run(capsys, "models", "delete", "rgb", "--json", "-c", coll)
    assert code == 0 and json.loads(out)["deleted"] == "rgb"

    code, out, err = run(capsys, "-c", coll, "concepts", "train", "--vocab", "folders", "--vectors", "none",
                         "--name", "colours", "--min-support", "1", "-q", "--json")
    assert code == 0, err
    code, out, _ = run(capsys, "concepts", "show", "colours", "--json", "-c", coll)
    assert code == 0 and set(json.loads(out)["concepts"]) == set(COLOURS)
    code, out, _ = run(capsys, "concepts", "delete", "colours", "--json", "-c", coll)
    assert code == 0 and json.loads(out) == {"deleted": "colours"}


# -- errors as JSON -----------------------------------------------------------------------------------
def _json_error(err: str) -> dict:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return json.loads(lines[0])


def test_errors_are_json_on_stderr_under_json(capsys, tmp_path, coll, data):
    code, out, err = run(capsys, "info", "-c", str(tmp_path / "none"), "--json")
    e = _json_error(err)
    assert code == 2 and out == "" and e["type"] == "CollectionError" and "no collection" in e["error"]
    code, out, err = run(capsys, "--json", "-c", coll, "search")
    assert code == 2 and out == "" and _json_error(err)["type"] == "InvalidRequest"
    code, out, err = run(capsys, "--json", "-c", coll, "search", str(tmp_path / "missing.jpg"))
    assert code == 2 and out == "" and "missing.jpg" in _json_error(err)["error"]
    # usage errors too
    code, out, err = run(capsys, "search", query(data), "-k", "0", "--json")
    e = _json_error(err)
    assert code == 2 and e["type"] == "UsageError" and "-k" in e["error"]
    code, out, err = run(capsys, "search", "--json", "--foo")
    assert code == 2 and "cbir search --help" in _json_error(err)["error"]
    # without --json: one plain line, as before
    code, out, err = run(capsys, "info", "-c", str(tmp_path / "none"))
    assert code == 2 and err.startswith("cbir: error: no collection") and len(err.splitlines()) == 1


# -- -f/--filenames --------------------------------------------------------------------------------
def test_filenames_prints_paths_only(capsys, coll, data):
    q = query(data)
    code, out, _ = run(capsys, "-c", coll, "search", q, "-k", "3", "--json")
    want = [h["path"] for h in json.loads(out)["hits"]]
    for flag in ("-f", "--filenames"):
        code, out, err = run(capsys, "-c", coll, "search", q, "-k", "3", flag)
        assert code == 0 and out.splitlines() == want and err == ""
    code, out, err = run(capsys, "-c", coll, "search", q, "-f", "--json")
    assert code == 2 and "--filenames" in err


def test_filenames_on_scene_and_models_search(capsys, coll, data):
    pytest.importorskip("torch")
    q = query(data)
    code, _, err = run(capsys, "-c", coll, "concepts", "train", "--vocab", "folders", "--vectors", "none",
                       "--min-support", "1", "-q")
    assert code == 0, err
    code, out, _ = run(capsys, "-c", coll, "scene", "red", "-k", "4", "--json")
    want = [h["path"] for h in json.loads(out)["hits"]]
    code, out, err = run(capsys, "-c", coll, "scene", "red", "-k", "4", "-f")
    assert code == 0 and out.splitlines() == want and len(want) == 4
    assert run(capsys, "-c", coll, "train", str(data), "--name", "rgb", "--epochs", "2",
               "--head", "linear", "-q")[0] == 0
    code, out, _ = run(capsys, "-c", coll, "models", "search", "rgb", q, "-k", "5", "--json")
    want = [h["path"] for h in json.loads(out)["hits"]]
    code, out, err = run(capsys, "-c", coll, "models", "search", "rgb", q, "-k", "5", "-f")
    assert code == 0 and out.splitlines() == want and len(want) == 5


# -- help and unknown arguments ----------------------------------------------------------------------
def _walk(parser: argparse.ArgumentParser, seen: set[int] | None = None):
    seen = set() if seen is None else seen
    if id(parser) in seen:
        return
    seen.add(id(parser))
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _walk(child, seen)


def test_every_argument_has_help():
    parsers = list(_walk(build_parser()))
    assert len(parsers) > 30  # every command and group was walked
    missing = [f"{p.prog}: {a.option_strings or a.dest}" for p in parsers for a in p._actions
               if not isinstance(a, argparse._HelpAction)
               and (not a.help or a.help == argparse.SUPPRESS or not str(a.help).strip())]
    assert not missing, missing
    for p in parsers:  # and every command accepts the global options
        if p.prog != "cbir":
            assert {"-c", "--json", "-q", "--progress", "--debug"} <= set(p._option_string_actions), p.prog


@pytest.mark.parametrize(("argv", "where"), [
    (["search", "q.jpg", "--foo"], "cbir search"),
    (["hash", "list", "--foo"], "cbir hash list"),
    (["models", "search", "m", "q.jpg", "--foo"], "cbir models search"),
    (["--foo", "info"], "cbir"),
])
def test_unknown_argument_points_to_the_commands_help(capsys, argv, where):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"{where}: error: unrecognized argument: --foo (see `{where} --help`)"], err


# -- --version, completion, progress ----------------------------------------------------------------
def test_version(capsys):
    from cbir.extract import DEFAULT_EXTRACTOR
    from cbir.store.catalog import SCHEMA_VERSION
    from cbir.store.manifest import FORMAT_VERSION

    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert out.splitlines() == [f"cbir {__version__}", f"default extractor: {DEFAULT_EXTRACTOR}",
                                f"catalog schema: {SCHEMA_VERSION}", f"manifest format: {FORMAT_VERSION}"]


def test_shell_completion(tmp_path):
    pytest.importorskip("argcomplete")
    head = Path(cli.__file__).read_bytes()[:1024]
    assert b"PYTHON_ARGCOMPLETE_OK" in head  # register-python-argcomplete looks for it
    out = tmp_path / "completions"

    def complete(line: str) -> list[str]:
        env = {**os.environ, "_ARGCOMPLETE": "1", "COMP_LINE": line, "COMP_POINT": str(len(line)),
               "_ARGCOMPLETE_STDOUT_FILENAME": str(out), "_ARGCOMPLETE_IFS": "\n"}
        r = subprocess.run([sys.executable, "-m", "cbir.cli"], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        return out.read_text().split()

    assert {"search", "scene", "serve"} <= set(complete("cbir s"))
    assert "--filenames" in complete("cbir search --fil")
    assert {"list", "delete", "methods", "train"} <= set(complete("cbir hash "))


def test_progress_bars_only_on_a_terminal(capsys, tmp_path, data):
    c = str(tmp_path / "coll")
    code, _, err = run(capsys, "-c", c, "index", str(data), *CH)  # stderr is not a terminal here
    assert code == 0 and "indexing" not in err and "img/s" not in err, err
    code, _, err = run(capsys, "-c", str(tmp_path / "c2"), "--progress", "index", str(data), *CH)
    assert code == 0 and "indexing" in err, err
    code, _, err = run(capsys, "-c", str(tmp_path / "c3"), "--progress", "index", str(data), *CH, "-q")
    assert code == 0 and "indexing" not in err, err
