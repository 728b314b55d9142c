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
