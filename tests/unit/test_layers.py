"""The house (issue 12): dependencies point one way.

bottom    io/, store/, extract/, index/, errors, registry, atomic, paths, collection
features  hashing/, concepts/, train/, eval/, scenes, words, codes, search, indexing, demo ...
top       cli, commands/, service/, api (and the package facade ``cbir/__init__``)

Every module under src/cbir is parsed with ast; imports inside functions count too (a lazy
import is still a dependency). ``if TYPE_CHECKING:`` imports count as well.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PKG = SRC / "cbir"

BOTTOM_PACKAGES = ("cbir.io", "cbir.store", "cbir.extract", "cbir.index")
BOTTOM_MODULES = ("cbir.errors", "cbir.registry", "cbir.atomic", "cbir.paths", "cbir.collection")
FEATURES = ("hashing", "concepts", "train", "eval", "scenes", "words", "codes", "search", "indexing",
            "demo")
TOP = ("cli", "commands", "service", "api")

#: (importer, imported) pairs that break the rule on purpose, with the reason. Keep it empty.
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every cbir module ``path`` imports (absolute and relative; ``from X import y`` gives X
    and X.y, since y may be a submodule)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in out if m == "cbir" or m.startswith("cbir.")}


MODULES = {_module_name(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _violations(importers: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for mod, imported in MODULES.items():
        if not _within(mod, importers):
            continue
        for target in sorted(imported):
            if _within(target, forbidden) and (mod, target) not in ALLOWED:
                bad.append(f"{mod} imports {target}")
    return bad


def test_modules_found():
    assert len(MODULES) > 50
    for m in (*BOTTOM_PACKAGES, *BOTTOM_MODULES, "cbir.cli", "cbir.commands.common"):
        assert m in MODULES, m


def test_bottom_layer_imports_no_feature_or_top_module():
    upper = tuple(f"cbir.{n}" for n in (*FEATURES, *TOP))
    assert _violations((*BOTTOM_PACKAGES, *BOTTOM_MODULES), upper) == []


def test_only_the_top_layer_imports_the_top_layer():
    top = tuple(f"cbir.{n}" for n in TOP)
    below = tuple(m for m in MODULES if m != "cbir" and not _within(m, top))
    assert _violations(below, top) == []


def test_commands_do_not_import_the_cli_entry_point():
    assert _violations(("cbir.commands",), ("cbir.cli",)) == []


def test_allowed_violations_still_exist():
    """An allow-list entry that no longer happens must be removed."""
    stale = [pair for pair in ALLOWED if pair[1] not in MODULES.get(pair[0], set())]
    assert stale == []
