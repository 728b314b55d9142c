"""The files a simulation writes and resumes from: ``simulation.csv`` and ``selections.json``.

* ``simulation.csv``: one row per strategy, seed and round (:data:`CSV_COLUMNS`), appended and flushed as each
  round finishes (:class:`CsvAppender`); a resumed run keeps the rows already there (:func:`existing_rows`).
* ``selections.json``: the settings (:meth:`shoeseg.simulation.config.SimulationConfig.fingerprint`), the test
  split, each seed's start set (``start``: seed -> file names), the round-0 metrics (``round0``: seed ->
  ``metrics`` and ``seconds``) and which images every round added, with their scores (``rounds``: strategy ->
  seed -> ``[{"round", "added", "scores"}, ...]``): what a resumed run continues from.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from via_tools.files import atomic_write_text

log = logging.getLogger(__name__)

CSV_COLUMNS = ("strategy", "seed", "round", "n_labelled", "segm_AP", "segm_AP50", "bbox_AP", "seconds")
METRICS = ("segm_AP", "segm_AP50", "bbox_AP")


def _csv_values(row: dict[str, Any]) -> dict[str, Any]:
    out = {k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()}
    out.setdefault("seed", 0)
    return out


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Writes simulation rows as CSV (atomically); a row without ``seed`` is seed 0."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow(_csv_values(row))
    atomic_write_text(path, buf.getvalue())


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Reads rows written by :func:`write_csv` or a simulation back, numbers as numbers (a CSV from before
    seeds, without a ``seed`` column, reads as seed 0)."""
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for r in csv.DictReader(f):
            rows.append(
                {
                    "strategy": r["strategy"],
                    "seed": int(r.get("seed") or 0),
                    "round": int(r["round"]),
                    "n_labelled": int(r["n_labelled"]),
                    **{k: float(r[k]) for k in (*METRICS, "seconds")},
                }
            )
    return rows


class CsvAppender:
    """Appends rows to the simulation CSV, each flushed to disk before the next round starts."""

    def __init__(self, path: Path, *, fresh: bool) -> None:
        if fresh:
            atomic_write_text(path, ",".join(CSV_COLUMNS) + "\n")
        self._file = open(path, "a", encoding="utf-8", newline="")  # closed in close()
        self._writer = csv.DictWriter(self._file, fieldnames=list(CSV_COLUMNS), extrasaction="ignore",
                                      lineterminator="\n")

    def append(self, row: dict[str, Any]) -> None:
        self._writer.writerow(_csv_values(row))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def existing_rows(csv_path: Path) -> list[dict[str, Any]]:
    """The rows of a simulation CSV to resume; a last line cut off by a killed process is dropped."""
    if not csv_path.is_file():
        return []
    text = csv_path.read_text(encoding="utf-8")
    if not text.strip():
        return []
    header = text.splitlines()[0].split(",")
    if tuple(header) != CSV_COLUMNS:
        raise ValueError(f"{csv_path}: columns {header} are not a simulation's ({', '.join(CSV_COLUMNS)})")
    if not text.endswith("\n"):
        log.warning("%s: dropping an unfinished last line %r", csv_path, text.rsplit("\n", 1)[-1])
        atomic_write_text(csv_path, text[: text.rfind("\n") + 1])
    return read_csv(csv_path)


def new_selections(fingerprint: dict[str, Any], test: list[str]) -> dict[str, Any]:
    """``selections.json`` of a new run: its settings and test split, nothing selected yet."""
    return {"config": fingerprint, "test": test, "start": {}, "round0": {}, "rounds": {}}


def read_selections(path: Path, *, fingerprint: dict[str, Any], test: list[str]) -> dict[str, Any]:
    """``selections.json`` of a run to resume, checked to be from a run with the same settings and test split.

    Raises:
        ValueError: it was written with other settings (named) or another test split.
    """
    from shoeseg.simulation.config import fingerprint_differences

    state = json.loads(path.read_text(encoding="utf-8"))
    diffs = fingerprint_differences(state.get("config") or {}, fingerprint)
    if diffs:
        raise ValueError(f"{path} is from a run with other settings ({', '.join(diffs)}): a resumed run needs the "
                         "same settings (only --strategy and --seeds may change); choose another output folder")
    if state.get("test") != test:
        raise ValueError(f"{path}: the test split differs from this dataset's (another dataset?); choose "
                         "another output folder")
    return state


def write_selections(path: Path, selections: dict[str, Any]) -> None:
    """Writes ``selections.json`` (atomically)."""
    atomic_write_text(path, json.dumps(selections, indent=1))


__all__ = [
    "CSV_COLUMNS",
    "METRICS",
    "CsvAppender",
    "existing_rows",
    "new_selections",
    "read_csv",
    "read_selections",
    "write_csv",
    "write_selections",
]
