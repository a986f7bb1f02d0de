"""lit_rl's entries in a checkpoint: settings as plain values, and reading entries back with an
error that names what is missing."""

import dataclasses
from collections.abc import Iterable
from enum import Enum
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


def plain(value: Any) -> Any:  # noqa: ANN401 (any setting)
    """``value`` as a checkpoint's hyperparameters can hold it (they load with
    ``weights_only``: no objects): a dataclass (a peft ``LoraConfig``, lit_rl's settings) as a
    dict, enums by value, sets sorted, containers element by element."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, set):
        return sorted(plain(item) for item in value)
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value.value if isinstance(value, Enum) else value
