"""What a simulation's rows say over seeds: the mean and spread, the labels each strategy needs to reach
random's final mean mask AP (as a share of random's labels, per seed), and each strategy's difference from
random paired by seed."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def summarise(rows: Sequence[dict[str, Any]], metric: str = "segm_AP") -> dict[str, list[dict[str, Any]]]:
    """Per strategy, per number of labelled images: ``mean``, ``std`` (sample, 0 with one seed), ``min``,
    ``max`` of ``metric`` over seeds, and ``n`` (seeds).

    Example:
        >>> summarise([{"strategy": "random", "n_labelled": 8, "segm_AP": 0.1},
        ...            {"strategy": "random", "n_labelled": 8, "segm_AP": 0.3}])["random"][0]["mean"]
        0.2
    """
    groups: dict[str, dict[int, list[float]]] = {}
    for r in rows:
        groups.setdefault(r["strategy"], {}).setdefault(int(r["n_labelled"]), []).append(float(r[metric]))
    out: dict[str, list[dict[str, Any]]] = {}
    for s, by_n in groups.items():
        out[s] = [
            {"n_labelled": n, "mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
             "min": min(v), "max": max(v), "n": len(v)}
            for n, v in sorted(by_n.items())
        ]
    return out


@dataclass
class LabelShare:
    """How many labelled images one strategy needed to reach the baseline's final mean metric, per seed.

    Attributes:
        strategy: the strategy.
        target: the baseline's final mean metric (over its seeds).
        baseline_labels: the baseline's labelled images at its final round.
        labels: seed -> the first labelled-set size at which the seed's curve reached ``target`` (``None``: not
            reached in the rows given); a fraction when interpolated.
        interpolated: whether ``labels`` were read off straight lines between measured rounds.
    """

    strategy: str
    target: float
    baseline_labels: int
    labels: dict[int, float | None]
    interpolated: bool = False

    @property
    def shares(self) -> dict[int, float | None]:
        """seed -> labels needed / the baseline's labels (``None``: not reached)."""
        return {s: (None if n is None else n / self.baseline_labels) for s, n in self.labels.items()}

    def _reached(self) -> list[float]:
        return [v for v in self.shares.values() if v is not None]

    @property
    def reached(self) -> int:
        return len(self._reached())

    @property
    def mean(self) -> float | None:
        v = self._reached()
        return statistics.fmean(v) if v else None

    @property
    def std(self) -> float | None:
        v = self._reached()
        return (statistics.stdev(v) if len(v) > 1 else 0.0) if v else None

    @property
    def min(self) -> float | None:
        v = self._reached()
        return min(v) if v else None

    @property
    def max(self) -> float | None:
        v = self._reached()
        return max(v) if v else None

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "target": self.target, "baseline_labels": self.baseline_labels,
                "labels": {str(k): v for k, v in self.labels.items()}, "interpolated": self.interpolated,
                "reached": self.reached,
                "seeds": len(self.labels), "mean": self.mean, "std": self.std, "min": self.min, "max": self.max}


def _crossing(pts: Sequence[tuple[int, float]], target: float, *, interpolate: bool) -> float | None:
    """The first labelled-set size at which a curve of ``(n, value)`` points (sorted by ``n``) reaches ``target``;
    with ``interpolate``, where the straight line from the last point below it to the first point at or above it
    crosses it (a curve that starts at or above the target crosses at its first point)."""
    prev: tuple[int, float] | None = None
    for n, v in pts:
        if v >= target - 1e-9:
            if not interpolate or prev is None:
                return n
            (n0, v0) = prev
            return n0 + (n - n0) * (target - v0) / (v - v0)
        prev = (n, v)
    return None


def labels_to_reach(
    rows: Sequence[dict[str, Any]], *, baseline: str = "random", metric: str = "segm_AP", interpolate: bool = False
) -> list[LabelShare]:
    """Labels each strategy needs to reach the baseline's final mean ``metric``, as a share of the baseline's.

    The target is the mean over seeds of the baseline's ``metric`` at its largest labelled set (its final
    round). For every strategy and seed, the labels needed are the smallest labelled-set size whose row
    reaches the target (measured points only: the answer moves in steps of the batch, and is an upper bound
    of the true crossing); with ``interpolate``, the size where the straight line between the last round below
    the target and the first at or above it crosses it (an estimate between two measured rounds, which
    assumes the curve is straight there). The share divides it by the baseline's final labelled-set size:
    0.6 means 40% fewer labels than random needed for random's final AP. A seed whose curve never reaches the
    target is ``None`` and left out of the mean, std, min and max (``reached`` counts the others). The
    baseline's own line shows how much the seeds alone move the answer.

    Raises:
        ValueError: no row of the baseline.

    Example:
        >>> rows = [{"strategy": s, "seed": 0, "n_labelled": n, "segm_AP": ap}
        ...         for s, pts in {"random": [(8, 0.1), (16, 0.2), (24, 0.3)],
        ...                        "entropy": [(8, 0.1), (16, 0.3), (24, 0.4)]}.items() for n, ap in pts]
        >>> [(x.strategy, x.mean) for x in labels_to_reach(rows)]
        [('random', 1.0), ('entropy', 0.6666666666666666)]
    """
    base = [r for r in rows if r["strategy"] == baseline]
    if not base:
        raise ValueError(f"no rows of the baseline strategy {baseline!r}: run it too to compare against")
    final_n = max(int(r["n_labelled"]) for r in base)
    target = statistics.fmean(float(r[metric]) for r in base if int(r["n_labelled"]) == final_n)
    curves: dict[str, dict[int, list[tuple[int, float]]]] = {}
    for r in rows:
        curves.setdefault(r["strategy"], {}).setdefault(int(r.get("seed", 0)), []).append(
            (int(r["n_labelled"]), float(r[metric])))
    out = []
    for strategy, by_seed in curves.items():
        labels = {seed: _crossing(sorted(pts), target, interpolate=interpolate)
                  for seed, pts in sorted(by_seed.items())}
        out.append(LabelShare(strategy=strategy, target=target, baseline_labels=final_n, labels=labels,
                              interpolated=interpolate))
    out.sort(key=lambda x: (x.strategy != baseline,))
    return out


def format_label_shares(shares: Sequence[LabelShare], *, metric: str = "segm_AP") -> str:
    """A text table of :func:`labels_to_reach`'s answer."""
    if not shares:
        return ""
    s0 = shares[0]
    how = ("read off straight lines between measured rounds" if s0.interpolated
           else "measured rounds only, so the share moves in steps of the batch")
    lines = [
        f"labels needed to reach {s0.strategy if s0.strategy == 'random' else 'the baseline'}'s final mean "
        f"{metric} {s0.target:.4f} ({s0.baseline_labels} labelled images), as a share of "
        f"{s0.baseline_labels}; {how}:",
        f"{'strategy':<26} {'mean':>6} {'std':>6} {'min':>6} {'max':>6} {'reached':>8}  labels per seed",
    ]

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def n_fmt(n: float | None) -> str:
        return "not reached" if n is None else (f"{n:.1f}" if x.interpolated else f"{n:g}")

    for x in shares:
        per_seed = ", ".join(f"{s}: {n_fmt(n)}" for s, n in x.labels.items())
        lines.append(f"{x.strategy:<26} {f(x.mean):>6} {f(x.std):>6} {f(x.min):>6} {f(x.max):>6} "
                     f"{x.reached:>4}/{len(x.labels):<3}  {per_seed}")
    return "\n".join(lines)


def paired_differences(
    rows: Sequence[dict[str, Any]], *, baseline: str = "random", metric: str = "segm_AP"
) -> dict[str, list[dict[str, Any]]]:
    """Each strategy's ``metric`` minus the baseline's, paired by seed and labelled-set size.

    Within one simulation a seed's strategies share its start set and first version, so the pairing removes
    what a seed's own draw puts into both curves (rows combined from runs of other settings pair only as well
    as their seeds match). Per strategy other than the baseline and per labelled-set size both have rows for:
    ``mean``, ``min``, ``max`` of the per-seed differences, and ``n`` (seeds paired).

    Example:
        >>> rows = [{"strategy": s, "seed": k, "n_labelled": 8, "segm_AP": ap}
        ...         for s, aps in {"random": [0.2, 0.3], "entropy": [0.25, 0.31]}.items() for k, ap in enumerate(aps)]
        >>> d = paired_differences(rows)["entropy"][0]
        >>> (d["n"], round(d["mean"], 3), round(d["min"], 3), round(d["max"], 3))
        (2, 0.03, 0.01, 0.05)
    """
    values: dict[tuple[str, int, int], float] = {
        (r["strategy"], int(r.get("seed", 0)), int(r["n_labelled"])): float(r[metric]) for r in rows}
    out: dict[str, list[dict[str, Any]]] = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        if strategy == baseline:
            continue
        by_n: dict[int, list[float]] = {}
        for (s, seed, n), v in values.items():
            if s == strategy and (baseline, seed, n) in values:
                by_n.setdefault(n, []).append(v - values[(baseline, seed, n)])
        out[strategy] = [{"n_labelled": n, "mean": statistics.fmean(d), "min": min(d), "max": max(d), "n": len(d)}
                         for n, d in sorted(by_n.items())]
    return out


def format_paired_differences(diffs: dict[str, list[dict[str, Any]]], *, baseline: str = "random",
                              metric: str = "segm_AP") -> str:
    """A text table of :func:`paired_differences`: per strategy, the mean [min, max] difference at each size."""
    sizes = sorted({p["n_labelled"] for pts in diffs.values() for p in pts})
    if not sizes:
        return ""
    lines = [f"{metric} minus {baseline}'s, paired by seed: mean [min, max] (seeds paired)",
             f"{'strategy':<26} " + " ".join(f"{f'{n} labelled':>28}" for n in sizes)]
    for s, pts in diffs.items():
        at = {p["n_labelled"]: p for p in pts}
        cells = [f"{at[n]['mean']:+.3f} [{at[n]['min']:+.3f}, {at[n]['max']:+.3f}] ({at[n]['n']})" if n in at else "-"
                 for n in sizes]
        lines.append(f"{s:<26} " + " ".join(f"{c:>28}" for c in cells))
    return "\n".join(lines)


def format_summary(rows: Sequence[dict[str, Any]]) -> str:
    """A text table: per strategy and labelled-set size, mask AP and mask AP50 over seeds (mean, min-max)."""
    ap, ap50 = summarise(rows, "segm_AP"), summarise(rows, "segm_AP50")
    lines = [f"{'strategy':<26} {'labelled':>8} {'seeds':>5} {'segm_AP mean [min, max]':>26} "
             f"{'segm_AP50 mean [min, max]':>27}"]
    for s, pts in ap.items():
        for p, q in zip(pts, ap50[s], strict=True):
            lines.append(f"{s:<26} {p['n_labelled']:>8} {p['n']:>5} "
                         f"{p['mean']:>8.4f} [{p['min']:.4f}, {p['max']:.4f}] "
                         f"{q['mean']:>9.4f} [{q['min']:.4f}, {q['max']:.4f}]")
    return "\n".join(lines)


__all__ = ["LabelShare", "format_label_shares", "format_paired_differences", "format_summary", "labels_to_reach",
           "paired_differences", "summarise"]
