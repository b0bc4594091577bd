"""One record of everything a patch changed on a model, so that it can be undone completely."""

from __future__ import annotations

from typing import Any, Callable

_MISSING = object()


class PatchState:
    """Undo log of one ``apply_patch``: attributes set, hooks added, each undone in reverse order.

    Family patchers change a model only through this object, so ``remove_patch`` restores every
    attribute (or deletes the ones the patch added) and removes every hook. ``options`` keeps the
    settings the model was patched with, for inspection and re-application.
    """

    def __init__(self, family: str, options: dict[str, Any]) -> None:
        self.family = family
        self.options = dict(options)
        self._undo: list[Callable[[], None]] = []

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value``, remembering the previous value (or its absence) from ``obj.__dict__``."""
        previous = obj.__dict__.get(name, _MISSING) if hasattr(obj, "__dict__") else _MISSING
        if previous is _MISSING and hasattr(obj, "_modules") and name in obj._modules:
            previous = obj._modules[name]
        setattr(obj, name, value)
        self._undo.append(lambda: _restore(obj, name, previous))

    def add_undo(self, fn: Callable[[], None]) -> None:
        """Register a callable that undoes a change (e.g. a hook handle's ``remove``)."""
        self._undo.append(fn)

    def undo(self) -> None:
        """Undo every recorded change, newest first. Safe to call once per state."""
        while self._undo:
            self._undo.pop()()


def _restore(obj: Any, name: str, previous: Any) -> None:
    if previous is _MISSING:
        delattr(obj, name)
    else:
        setattr(obj, name, previous)
