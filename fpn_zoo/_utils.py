"""Small helpers shared by every layer of the package (no imports from the rest of it)."""
from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["close_matches"]


def close_matches(name: str, choices: Iterable[str], *, cutoff: float = 0.5) -> str:
    """``"; did you mean 'a', 'b'?"`` for the closest of ``choices`` to ``name``, or ``""`` if none is close.

    Example:
        >>> close_matches("fpm", ["fpn", "pan"])
        "; did you mean 'fpn'?"
    """
    choices = list(choices)
    lowered = {c.lower(): c for c in choices}
    matches = difflib.get_close_matches(str(name).lower(), list(lowered), n=3, cutoff=cutoff)
    return f"; did you mean {', '.join(repr(lowered[m]) for m in matches)}?" if matches else ""
