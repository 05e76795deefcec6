"""Values that may arrive as text from ``python -m monai.bundle run ... --<id> <value>``.

The bundle command line (python-fire) turns ``--clahe False`` into a bool but leaves
``--clahe false`` a string, and ``bool("false")`` is True: a switch would silently stay on.
"""

from __future__ import annotations

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def as_bool(value: object, name: str) -> bool:
    """``value`` as a bool: a bool, 0/1, or one of true/false/yes/no/on/off (any case).

    Raises
    ------
    ValueError
        For anything else, naming the argument.

    Examples
    --------
    >>> as_bool("false", "clahe"), as_bool(True, "clahe"), as_bool("On", "clahe")
    (False, True, True)
    >>> as_bool("maybe", "clahe")
    Traceback (most recent call last):
    ...
    ValueError: Argument "clahe" must be true or false, got 'maybe'
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f'Argument "{name}" must be true or false, got {value!r}')
