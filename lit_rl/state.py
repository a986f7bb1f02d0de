"""Reading lit_rl's own entries back from a checkpoint, with an error that names what is missing."""

from collections.abc import Iterable
from typing import Any


def require_keys(state: dict[str, Any], keys: Iterable[str], owner: str) -> None:
    """Raise a ``KeyError`` naming ``owner`` and every one of ``keys`` that ``state`` (a
    checkpoint, or the part of one ``owner`` wrote) lacks."""
    missing = [key for key in keys if key not in state]
    if missing:
        raise KeyError(
            f"{owner} cannot resume from this checkpoint: it has no {', '.join(missing)}. It "
            "was written by another algorithm or callback set, or by an older lit_rl; resume "
            "with the configuration that wrote it, or start from its exported policy instead "
            "(model: <checkpoint dir>/policy)"
        )
