"""JSON text in and out for every format, with the limits said and JSON's own rules kept.

Reading (:func:`parse_json`) refuses what is not JSON although Python's ``json`` takes it (``NaN``,
``Infinity``, and numbers too large for a 64-bit float, which Python reads as infinite), refuses nesting
deeper than :data:`MAX_DEPTH` (instead of a ``RecursionError``), and counts duplicate keys in an object
(the last one is kept, as every JSON reader does) as a fixed problem in the :class:`~via_tools.report.Report`.

Writing (:func:`dump_json`) never writes ``NaN`` or ``Infinity``: a non-finite number is an error naming
where it is in the document, and nothing is written.

Example:
    >>> parse_json('{"a": 1, "a": 2}', where="x.json")
    {'a': 2}
    >>> parse_json('{"x": NaN}', where="x.json")
    Traceback (most recent call last):
    ...
    via_tools.errors.AnnotationError: x.json: line 1 column 7: NaN is not a JSON number
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np

from via_tools.errors import AnnotationError
from via_tools.report import Report

#: Deepest nesting of arrays and objects read or written (real annotation files nest under 12 levels).
MAX_DEPTH = 100
#: Largest annotation file read, in bytes.
MAX_FILE_BYTES = 2**30

#: Problem kind counted for duplicate keys.
DUPLICATE_KEYS = "duplicate JSON keys (the last kept)"

_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(c for c in range(256) if c not in _BRACKETS)
# the tokens that can hold a bad number: strings (skipped), NaN / Infinity, and numbers
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?Infinity|NaN|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?')
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


class _NotJsonNumber(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _constant(token: str) -> Any:
    raise _NotJsonNumber(token)


def _float(token: str) -> float:
    v = float(token)
    if not math.isfinite(v):
        raise _NotJsonNumber(token)
    return v


def _line_col(text: str, pos: int) -> str:
    line = text.count("\n", 0, pos) + 1
    return f"line {line} column {pos - (text.rfind(chr(10), 0, pos) + 1) + 1}"


def _bad_number_place(text: str, token: str) -> str:
    for m in _TOKEN.finditer(text):
        if m.group(0) == token:
            return _line_col(text, m.start()) + ": "
    return ""  # pragma: no cover - the parser saw the token in the text


def _too_deep_place(text: str) -> str:
    depth = 0
    for m in _NESTING.finditer(text):
        c = m.group(0)
        if c in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return _line_col(text, m.start()) + ": "
        elif c in "]}":
            depth -= 1
    return ""


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` / ``{`` in JSON text, counting brackets inside strings too.

    Fast (no parse): brackets in strings can make it wrong either way, so it is a first check only;
    the parser's own limit catches the rest.

    Example:
        >>> nesting_depth(b'{"a": [[1], {"b": []}]}')
        4
    """
    brackets = np.frombuffer(data.translate(None, _NOT_BRACKETS), dtype=np.uint8)
    if not brackets.size:
        return 0
    steps = np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1).astype(np.int64)
    return int(np.cumsum(steps).max())


def parse_json(text: str, *, where: str, report: Report | None = None) -> Any:
    """Parses JSON text as the JSON standard means it.

    Args:
        text: the JSON text.
        where: names the file (and the place in it, e.g. a CSV cell) at the start of every message.
        report: receives the count of duplicate keys (:data:`DUPLICATE_KEYS`), with the first keys named.

    Raises:
        AnnotationError: ``"<where>: line L column C: ..."``: not valid JSON, ``NaN`` / ``Infinity``, a
            number too large for a 64-bit float, nesting deeper than :data:`MAX_DEPTH`.

    Example:
        >>> parse_json('[1e999]', where="a.json")
        Traceback (most recent call last):
        ...
        via_tools.errors.AnnotationError: a.json: line 1 column 2: 1e999 is too large for a JSON number (64-bit float)
    """
    if nesting_depth(text.encode("utf-8", "surrogatepass")) > MAX_DEPTH and _too_deep_place(text):
        raise AnnotationError(f"{where}: {_too_deep_place(text)}arrays and objects nested deeper than {MAX_DEPTH} "
                              "levels (the limit)")
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(items)
        if len(d) != len(items):
            seen: set[str] = set()
            duplicates.extend(k for k, _ in items if k in seen or seen.add(k))
        return d

    try:
        doc = json.loads(text, object_pairs_hook=pairs, parse_constant=_constant, parse_float=_float)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{where}: line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") from e
    except _NotJsonNumber as e:
        what = f"{e.token} is not a JSON number" if e.token.lstrip("-") in ("NaN", "Infinity") \
            else f"{e.token[:40]} is too large for a JSON number (64-bit float)"
        raise AnnotationError(f"{where}: {_bad_number_place(text, e.token)}{what}") from None
    except RecursionError:
        raise AnnotationError(f"{where}: {_too_deep_place(text)}arrays and objects nested deeper than "
                              f"{MAX_DEPTH} levels (the limit)") from None
    if duplicates and report is not None:
        for k in duplicates:
            report.warn(DUPLICATE_KEYS, f"{where}: key {k[:60]!r}")
    return doc


def _path_text(path: list[Any]) -> str:
    return " > ".join(str(k) if isinstance(k, str) else f"[{k}]" for k in path) or "the document"


def find_non_finite(doc: Any) -> tuple[list[Any], Any] | None:
    """The path to the first number of ``doc`` that JSON cannot hold (NaN, infinite) and that number."""
    stack: list[tuple[list[Any], Any]] = [([], doc)]
    seen: set[int] = set()
    while stack:
        path, v = stack.pop()
        if isinstance(v, float | np.floating) and not math.isfinite(v):
            return path, v
        if isinstance(v, dict | list | tuple):
            if id(v) in seen:
                continue
            seen.add(id(v))
            items = list(v.items()) if isinstance(v, dict) else list(enumerate(v))
            stack.extend(([*path, k], x) for k, x in reversed(items))
    return None


def dump_json(doc: Any, *, where: str, indent: int | None = None) -> str:
    """JSON text of ``doc`` (UTF-8 characters kept), refusing what JSON cannot hold.

    Raises:
        AnnotationError: a NaN or infinite number (named by its path in the document), or nesting too deep.

    Example:
        >>> dump_json({"images": [{"width": float("nan")}]}, where="out.json")
        Traceback (most recent call last):
        ...
        via_tools.errors.AnnotationError: out.json: images > [0] > width is NaN, which JSON cannot hold; nothing written
    """
    try:
        if indent is None:
            return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        return json.dumps(doc, ensure_ascii=False, indent=indent, allow_nan=False)
    except ValueError as e:
        found = find_non_finite(doc)
        if found is None:
            raise AnnotationError(f"{where}: cannot be written as JSON ({e})") from None
        path, v = found
        raise AnnotationError(f"{where}: {_path_text(path)} is {number_text(v)}, which JSON cannot hold; "
                              "nothing written") from None
    except RecursionError:
        raise AnnotationError(f"{where}: nested too deeply to write as JSON (limit {MAX_DEPTH} levels)") from None


def number_text(v: float) -> str:
    """A number in JSON's words (``NaN``, ``Infinity``, ``-Infinity``, else up to 6 significant digits).

    Example:
        >>> number_text(float("-inf")), number_text(1e300), number_text(2.5)
        ('-Infinity', '1e+300', '2.5')
    """
    v = float(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "Infinity" if v > 0 else "-Infinity"
    return f"{v:.6g}"
