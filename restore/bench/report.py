"""Where every benchmark leaves its result: NAME.json (the figures) and NAME.md (the table) in one folder."""

from __future__ import annotations

import json
from pathlib import Path


def write_report(out: str | Path, name: str, report: dict, markdown: str) -> Path:
    """Write `out`/NAME.json and `out`/NAME.md (creating `out`); returns `out` as a Path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(markdown + "\n")
    return out
