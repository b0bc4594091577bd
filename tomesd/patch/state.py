"""One record of everything a patch changed on a model, so that it can be undone completely, and the marks
that tie every model a patch touched to that record (one model, one patch)."""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

from torch import nn

_MISSING = object()
MARK = "_tomesd"  # the instance attribute naming the PatchState on every object a patch touched

# (obj, state, memo) -> copy and (obj, state, protocol) -> reduce tuple, for a model (patched copy) or an
# inner module (unpatched copy); given by tomesd.apply_patch, which alone can re-apply a patch.
Copier = Callable[[Any, "PatchState", dict], Any]
Reducer = Callable[[Any, "PatchState", int], Any]


class PatchState:
    """Undo log of one ``apply_patch``: attributes set, hooks added, each undone in reverse order.

    Family patchers change a model only through this object, so ``remove_patch`` restores every
    attribute (or deletes the ones the patch added) and removes every hook. ``options`` keeps the
    settings the model was patched with, for inspection and re-application; ``owner`` is the object
    ``apply_patch`` was called on (a pipeline, or the model itself).
    """

    def __init__(self, family: str, options: dict[str, Any], owner: Any = None) -> None:
        self.family = family
        self.options = dict(options)
        self.owner = owner
        self._undo: list[Callable[[], None]] = []
        self._changed: list[Any] = []  # every object set_attr changed, in order

    def set_attr(self, obj: Any, name: str, value: Any) -> None:
        """Set ``obj.name = value``, remembering the previous value (or its absence) from ``obj.__dict__``."""
        previous = obj.__dict__.get(name, _MISSING) if hasattr(obj, "__dict__") else _MISSING
        if previous is _MISSING and hasattr(obj, "_modules") and name in obj._modules:
            previous = obj._modules[name]
        setattr(obj, name, value)
        self._changed.append(obj)
        self._undo.append(lambda: _restore(obj, name, previous))

    def add_undo(self, fn: Callable[[], None]) -> None:
        """Register a callable that undoes a change (e.g. a hook handle's ``remove``)."""
        self._undo.append(fn)

    def undo(self) -> None:
        """Undo every recorded change, newest first. Safe to call once per state."""
        while self._undo:
            self._undo.pop()()
        self._changed.clear()

    def changed_objects(self) -> list[Any]:
        """The objects whose attributes this patch set (each once, in order)."""
        return list({id(obj): obj for obj in self._changed}.values())


def state_of(obj: Any) -> PatchState | None:
    """The patch ``obj`` carries (applied to it, or to a pipeline or model holding it), or None."""
    state = getattr(obj, "__dict__", {}).get(MARK)
    return state if isinstance(state, PatchState) else None


def models_of(obj: Any) -> list[nn.Module]:
    """The models a patch of ``obj`` may touch: a pipeline's ``components`` that are modules, else ``obj``."""
    components = getattr(obj, "components", None)
    if isinstance(components, dict) and not isinstance(obj, nn.Module):
        return [m for m in components.values() if isinstance(m, nn.Module)]
    return [obj] if isinstance(obj, nn.Module) else []


def patches_within(obj: Any) -> list[PatchState]:
    """Every patch carried by ``obj``, its models or any module inside them (each once)."""
    found = [state_of(obj)] + [state_of(m) for model in models_of(obj) for m in model.modules()]
    return list({id(s): s for s in found if s is not None}.values())


def hook_counts(obj: Any) -> dict[int, tuple[nn.Module, int]]:
    """Forward (pre-)hook count of every module of ``obj``'s models, by module id: taken before and after a
    patch, it tells which modules the patch hooked, whichever family did it."""
    modules = [m for model in models_of(obj) for m in model.modules()]
    return {id(m): (m, len(m._forward_pre_hooks) + len(m._forward_hooks)) for m in modules}


def mark(obj: Any, state: PatchState, counts_before: dict[int, tuple[nn.Module, int]], copy_model: Copier,
         copy_inner: Copier, reduce_model: Reducer, reduce_inner: Reducer) -> None:
    """Mark everything the patch ``state`` touched, through ``state`` (so that removal unmarks it).

    ``obj`` (the owner) and each of its models with a changed module carry the state and copy / pickle through
    ``copy_model`` / ``reduce_model``; every other module the patch hooked or changed carries the state and
    copies / pickles through ``copy_inner`` / ``reduce_inner``. ``copy.deepcopy`` and ``pickle`` look these
    up on the instance (``__deepcopy__``, ``__reduce_ex__``), so they never copy the patch's hooks, which
    would share this state.
    """
    after = hook_counts(obj)
    touched = {id(m): m for key, (m, n) in after.items() if n != counts_before.get(key, (m, 0))[1]}
    touched.update({id(o): o for o in state.changed_objects() if isinstance(o, nn.Module)})
    models = [obj] + [m for m in models_of(obj) if m is not obj and any(id(x) in touched for x in m.modules())]
    for target in models:
        _mark_one(target, state, copy_model, reduce_model)
    for module in touched.values():
        if all(module is not m for m in models):
            _mark_one(module, state, copy_inner, reduce_inner)


def _mark_one(target: Any, state: PatchState, copier: Copier, reducer: Reducer) -> None:
    state.set_attr(target, MARK, state)
    state.set_attr(target, "__deepcopy__", partial(copier, target, state))
    state.set_attr(target, "__reduce_ex__", partial(reducer, target, state))


def _restore(obj: Any, name: str, previous: Any) -> None:
    if previous is _MISSING:
        delattr(obj, name)
    else:
        setattr(obj, name, previous)
