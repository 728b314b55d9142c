"""The plot of a simulation: mask AP and mask AP50 against labelled images, per strategy over seeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shoeseg.simulation.summary import summarise
from via_tools.files import atomic_path


def plot_curves(rows: Sequence[dict[str, Any]], path: Path, *, title: str = "Active learning") -> Path:
    """Mask AP (and mask AP50) against the number of labelled images: per strategy the mean over seeds as a
    line and the min-max over seeds as a band.

    Example:
        >>> plot_curves(read_csv("out/simulation.csv"), Path("out/simulation.png"))  # doctest: +SKIP
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for metric, ax in zip(("segm_AP", "segm_AP50"), axes, strict=True):
        for s, pts in summarise(rows, metric).items():
            x = [p["n_labelled"] for p in pts]
            seeds = max(p["n"] for p in pts)
            (line,) = ax.plot(x, [p["mean"] for p in pts], marker="o",
                              label=f"{s} ({seeds} seed{'s' if seeds != 1 else ''})")
            if seeds > 1:
                ax.fill_between(x, [p["min"] for p in pts], [p["max"] for p in pts], color=line.get_color(),
                                alpha=0.18, linewidth=0)
        ax.set_xlabel("labelled images")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{'mask AP' if metric == 'segm_AP' else 'mask AP50'} on the test split")
        ax.grid(True, alpha=0.3)
    axes[0].legend(title="mean, band: min-max over seeds", fontsize="small")
    fig.suptitle(title)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:  # the format from the target's extension, PNG without one
            fig.savefig(tmp, dpi=120, format=path.suffix[1:].lower() or "png")
    finally:
        plt.close(fig)
    return path


__all__ = ["plot_curves"]
