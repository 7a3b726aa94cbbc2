"""The accuracy suites' plot: one curve per method and RESTORE setting over the budget, the full model a line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path


def budget_curves(path: Path, results: list[dict], value: Callable[[dict], float], full: float, full_label: str,
                  ylabel: str, title: str) -> None:
    """Write a PNG: for each method, +RESTORE solid and base dashed, `value(record)` against the budget;
    `results` are the records at the default gamma."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = list(dict.fromkeys(r["method"] for r in results))
    colours = plt.get_cmap("tab20")
    for i, m in enumerate(methods):
        labelled = False
        for on, style in ((True, "-"), (False, "--")):
            rs = sorted((r for r in results if r["method"] == m and r["restore"] == on), key=lambda r: r["budget"])
            if rs:
                ax.plot([r["budget"] for r in rs], [value(r) for r in rs], style, marker="o", ms=3,
                        color=colours(i % 20), label=None if labelled else m)
                labelled = True
    ax.axhline(full, color="black", lw=0.8, label=full_label)
    ax.set_xlabel("visual tokens kept per image")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
