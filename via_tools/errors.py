"""The one exception type that via_tools raises for bad input."""

from __future__ import annotations


class AnnotationError(ValueError):
    """Bad annotation input. The message names the file, image and region at fault.

    Example:
        >>> raise AnnotationError("shoes.json: image 'a.jpg': region 3: polygon has 2 points")
        Traceback (most recent call last):
        ...
        via_tools.errors.AnnotationError: shoes.json: image 'a.jpg': region 3: polygon has 2 points
    """


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages (``object``, ``array``, ``string``...).

    Example:
        >>> json_type(None), json_type({}), json_type([1]), json_type(2.5), json_type(True)
        ('null', 'object', 'array', 'number', 'boolean')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def json_text(value: object, limit: int = 40) -> str:
    """A value as JSON writes it (``null``, ``true``, ``"a"``, ``NaN``), cut to ``limit`` characters, for messages.

    Example:
        >>> json_text(None), json_text("a"), json_text([True, 1.5])
        ('null', '"a"', '[true, 1.5]')
    """
    import json

    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
