"""Imports point one way (DESIGN §1): jobs -> pipelines -> restore, and inside each package from the
higher layers to the lower ones. Checked on the source with `ast`, lazy imports inside functions included,
so a layering break fails here instead of as an import cycle or a Ray import in a library user's process."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("restore", "pipelines", "jobs")

# Layers inside restore/: a module may import its own layer and the ones below, never above.
RESTORE_LAYERS = [
    {"config", "flops", "hub", "archs"},
    {"tokens", "request"},
    {"methods"},
    {"rectify"},
    {"sequence"},
    {"plan", "prompts"},
    {"runtime"},
    {"models"},
    {"engine"},
    {"viz", "zoo", "bench"},
]
# Layers inside pipelines/: media below the row contract, below the jobs; batch and serve never meet.
PIPELINES_LAYERS = [{"media"}, {"rows"}, {"batch", "serve"}, {"bench"}]
APART = {("batch", "serve"), ("serve", "batch")}


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            # `from restore import engine` imports the sub-module restore.engine
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return out


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _layer(name: str, layers: list[set[str]]) -> int | None:
    for rank, members in enumerate(layers):
        if name in members:
            return rank
    return None


def _violations(package: str, layers: list[set[str]]) -> list[str]:
    bad = []
    for path in _sources(package):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if len(parts) < 2 or parts[1] == "__init__":
            continue
        here = parts[1]
        rank = _layer(here, layers)
        assert rank is not None, f"{path.relative_to(ROOT)}: {package}/{here} has no layer in tests/test_layering.py"
        seen = set()
        for line, module in _imports(path):
            target = module.split(".")
            if (line, tuple(target[:2])) in seen:
                continue
            seen.add((line, tuple(target[:2])))
            if target[0] != package or len(target) < 2 or target[1] == here:
                continue
            other = _layer(target[1], layers)
            if other is None:
                continue  # a name imported from the package's __init__, not a sub-module
            if other > rank or (here, target[1]) in APART:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module} ({package}/{target[1]} is above "
                           f"or beside {package}/{here})")
    return bad


@pytest.mark.parametrize("package, forbidden", [
    ("restore", ("ray", "pipelines", "jobs")),
    ("pipelines", ("jobs",)),
])
def test_packages_import_downward_only(package, forbidden):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in _sources(package)
        for line, module in _imports(path)
        if module.split(".")[0] in forbidden
    ]
    assert not bad, "\n".join(bad)


def test_restore_layers_point_down():
    assert not _violations("restore", RESTORE_LAYERS), "\n".join(_violations("restore", RESTORE_LAYERS))


def test_pipelines_layers_point_down_and_batch_and_serve_stay_apart():
    assert not _violations("pipelines", PIPELINES_LAYERS), "\n".join(_violations("pipelines", PIPELINES_LAYERS))


def test_the_checker_sees_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "restore"
    (fake / "methods").mkdir(parents=True)
    (fake / "methods" / "x.py").write_text("def f():\n    from restore.engine import Engine\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _violations("restore", RESTORE_LAYERS) == [
        "restore/methods/x.py:2 imports restore.engine (restore/engine is above or beside restore/methods)"
    ]
