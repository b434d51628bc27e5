"""The profiler's picture: speed against ImageNet top-1, zoo models labelled, timm's twins beside them.

Speed is eval throughput (images/s at the profiled batch size) when measured, else batch-1
latency turned into images/s. A zoo model's top-1 is the official one (``vitzoo.results``); its
timm twin (a row's ``versus`` model, or a timm model profiled by name) is drawn at timm's measured
top-1 of the same weights where timm publishes one, else at the official figure, and joined to
the zoo point it was timed against by a line. Matplotlib runs on the Agg backend
(no display needed).
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = ["plot_tradeoff", "speed_of"]


def speed_of(row: dict, prefix: str = "") -> Optional[float]:
    """Images/s of a profile row (``prefix='versus_'``: of the model it was compared with)."""
    for key in sorted(row):
        if key.startswith(f"{prefix}img_s_b") and row[key]:
            return float(row[key])
    ms = row.get(f"{prefix}ms_b1")
    return 1e3 / ms if ms else None


def _top1(name: str) -> tuple[Optional[float], bool]:
    """(top-1, is_zoo) of a model name: a zoo model's official top-1, or a timm twin's."""
    from vitzoo.results import official, official_table
    row = official(name)
    if row is not None:
        return row["top1"], True
    for zoo in official_table().values():
        if zoo["timm_twin"] == name:
            return zoo["timm_top1"] or zoo["top1"], False
    return None, False


def plot_tradeoff(rows: Sequence[dict], path: str, title: str = "") -> int:
    """Write the PNG to `path`; returns how many points were drawn (0: an empty, labelled plot)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    points = []  # (speed, top1, name, is_zoo)
    for row in rows:
        top1, is_zoo = _top1(row["model"])
        if speed_of(row) is not None and top1 is not None:
            points.append((speed_of(row), top1, row["model"], is_zoo))
        other = row.get("versus")
        other_top1, other_zoo = _top1(other) if other else (None, False)
        if other_top1 is not None and speed_of(row, "versus_") is not None:
            points.append((speed_of(row, "versus_"), other_top1, other, other_zoo))
            if points[-2:][0][2] == row["model"]:  # join a model to what it was timed against
                (x0, y0, *_), (x1, y1, *_) = points[-2:]
                ax.plot([x0, x1], [y0, y1], color="grey", lw=0.8, zorder=2)
    for is_zoo, color, marker, label in ((True, "tab:blue", "o", "vitzoo"),
                                         (False, "tab:orange", "s", "timm twin")):
        mine = [p for p in points if p[3] == is_zoo]
        if mine:
            ax.scatter([p[0] for p in mine], [p[1] for p in mine], color=color, marker=marker,
                       zorder=3, label=label)
    for speed, top1, name, is_zoo in points:
        if is_zoo:
            ax.annotate(name.removeprefix("vitzoo_"), (speed, top1), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    if not points:
        ax.text(0.5, 0.5, "no profiled model has a known ImageNet top-1", ha="center",
                va="center", transform=ax.transAxes)
    else:
        ax.set_xscale("log")
        ax.margins(x=0.12, y=0.08)
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("eval throughput (images/s, log scale)")
    ax.set_ylabel("ImageNet-1k top-1 (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_title(title or "speed vs accuracy", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return len(points)
