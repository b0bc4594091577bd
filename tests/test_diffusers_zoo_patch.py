"""Never "accepted, then crash": every diffusers model class of the zoo (tests/diffusers_zoo.py) is either
patched and working (forward and backward run, ``remove_patch`` is bit-identical) or refused at apply time
with a ValueError naming it, the model left as it was. A diffusers release that adds a class gets a zoo
entry (tests/test_diffusers_zoo.py insists) and is then checked here."""

from __future__ import annotations

import pytest
import torch

import diffusers_zoo
import tomesd
from test_patch_diffusers import _assert_same_as, _snapshot
from tomesd.patch.diffusers.table import MODELS, model_kind

def _tensors(output):
    """Every tensor of a model output (a tensor, a tuple/list, a dict or a diffusers output object)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict) or hasattr(output, "to_tuple"):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    return []


@pytest.mark.parametrize("key", sorted(diffusers_zoo.ZOO))
def test_every_zoo_model_is_patched_and_working_or_refused_at_apply_time(key):
    model, kwargs = diffusers_zoo.build(key)
    before = _snapshot(model)
    try:
        tomesd.apply_patch(model, ratio=0.5, min_tokens=0, merge_crossattn=True)
    except ValueError as error:
        assert type(model).__name__ in str(error)
        kind = model_kind(model)  # a table entry is refused only when the model holds none of its blocks
        assert kind is None or not kind.locate(model, kind), "a class with a block-table entry must never be refused"
        assert not tomesd.is_patched(model)
        _assert_same_as(model, before)
        return
    outputs = _tensors(model(**kwargs))  # with gradients: backward must run too
    assert outputs and all(torch.isfinite(o).all() for o in outputs)
    sum(o.float().square().mean() for o in outputs).backward()
    tomesd.remove_patch(model)
    model.zero_grad(set_to_none=True)
    _assert_same_as(model, before)
    with torch.no_grad():
        restored = _tensors(model(**kwargs))
    tomesd.apply_patch(model, ratio=0.0)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(_tensors(model(**kwargs)), restored))  # ratio 0: exact


def test_the_zoo_patches_every_model_kind_of_the_table():
    """The other test could pass by refusing everything: the table's kinds must all be in the zoo."""
    built = {diffusers_zoo.class_name(key) for key in diffusers_zoo.ZOO}
    assert set(MODELS) <= built
