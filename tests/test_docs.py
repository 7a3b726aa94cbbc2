"""The README and docs/ name only things that exist: linked pages, `restore` subcommands, `python -m` modules.

Fast: reads Markdown, builds the `restore` argument parser, and looks modules up without
importing them (no model, no Ray).
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# `restore SUB [SUB2]` where a command starts: line start (after an optional `$ `), or after ; & | ( or `$(`.
_RESTORE = re.compile(r"(?:^|[;&|(]\s*)(?:\$\s+)?restore\s+([a-z][\w-]*)(?:\s+([a-z][\w-]*))?", re.MULTILINE)
_PYTHON_M = re.compile(r"\bpython(?:3(?:\.\d+)?)?\s+-m\s+([A-Za-z_][\w.]*)")
_SHELL = {"", "bash", "sh", "shell", "console", "zsh"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def _code(text: str) -> tuple[list[str], list[str]]:
    """(shell code blocks, inline code spans outside blocks) of a Markdown page."""
    blocks = [body for lang, body in _FENCE.findall(text) if lang.strip().lower() in _SHELL]
    prose = _FENCE.sub("", text)
    return blocks, _INLINE.findall(prose)


def _restore_commands() -> list[tuple[str, tuple[str, ...]]]:
    found = set()
    for page in PAGES:
        blocks, inline = _code(page.read_text())
        for snippet in blocks + inline:
            for m in _RESTORE.finditer(snippet):
                found.add((_rel(page), tuple(w for w in m.groups() if w)))
    return sorted(found)


def _python_modules() -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for m in _PYTHON_M.finditer(page.read_text()):
            found.add((_rel(page), m.group(1).rstrip(".")))
    return sorted(found)


def _relative_links() -> list[tuple[str, str]]:
    found = set()
    for page in PAGES:
        for target in _LINK.findall(_FENCE.sub("", page.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
                continue  # http(s):, mailto:, and anchors within the page
            found.add((_rel(page), target.split("#", 1)[0]))
    return sorted(found)


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser] | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return None


def _module_exists(name: str) -> bool:
    """find_spec for the top-level package, then each submodule looked up on its parent's path,
    so that no package __init__ runs (pipelines' would import Ray)."""
    head, *rest = name.split(".")
    spec = importlib.util.find_spec(head)
    for part in rest:
        if spec is None or spec.submodule_search_locations is None:
            return False
        path = list(spec.submodule_search_locations)
        spec = importlib.machinery.PathFinder.find_spec(f"{spec.name}.{part}", path)
    return spec is not None


def test_every_docs_page_is_reachable_from_the_readme():
    links = _relative_links()
    seen, todo = {"README.md"}, ["README.md"]
    while todo:
        page = todo.pop()
        for source, target in links:
            path = (ROOT / source).parent.joinpath(target).resolve()
            if source != page or path.suffix != ".md" or ROOT not in path.parents:
                continue
            if _rel(path) not in seen:
                seen.add(_rel(path))
                todo.append(_rel(path))
    orphans = sorted(_rel(p) for p in PAGES if _rel(p) not in seen)
    assert not orphans, f"no link from README.md (or a page it links) reaches {orphans}"


@pytest.mark.parametrize(("page", "target"), _relative_links())
def test_relative_link_exists(page, target):
    assert ((ROOT / page).parent / target).resolve().exists(), f"{page} links {target}, which does not exist"


@pytest.mark.parametrize(("page", "words"), [pytest.param(p, w, id=f"{p}:restore {' '.join(w)}")
                                             for p, w in _restore_commands()])
def test_restore_subcommand_exists(page, words):
    from jobs.cli import build_parser

    parser, said = build_parser(), ["restore"]
    for word in words:
        choices = _subcommands(parser)
        if choices is None:
            break  # the rest are the subcommand's own arguments (e.g. `restore label images`)
        assert word in choices, (
            f"{page}: `{' '.join(said + [word])}` is not a command; `{' '.join(said)}` has {sorted(choices)}"
        )
        parser = choices[word]
        said.append(word)
    assert _subcommands(parser) is None, f"{page}: `{' '.join(said)}` needs a subcommand"


@pytest.mark.parametrize(("page", "module"), _python_modules())
def test_python_m_module_exists(page, module):
    assert _module_exists(module), f"{page} runs `python -m {module}`, which is not an importable module"


def test_the_checks_see_the_docs():
    # Guards the parsers above: if they stopped finding anything, every check would pass vacuously.
    assert ("README.md", ("serve",)) in _restore_commands()
    assert ("README.md", ("bench", "speed")) in _restore_commands()
    assert ("docs/batch.md", "jobs.label") in _python_modules()
    assert ("README.md", "docs/serve.md") in _relative_links()
