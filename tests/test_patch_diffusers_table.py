"""The block table and its introspection: what is refused, what merge_report says, what the hooks are.

merge_report must agree exactly with the token counts the hooks produce (same policy, one source).
"""

from __future__ import annotations

import pickle
import warnings

import pytest
import torch

import diffusers_zoo
import tiny
import tomesd
from test_patch_diffusers import _inputs, _run, _snapshot, _assert_same_as, _token_counts
from tomesd.patch.diffusers import merge_report


@pytest.mark.parametrize("key", ["HunyuanDiT2DModel", "AuraFlowTransformer2DModel"])
def test_transformers_without_a_table_entry_are_refused_naming_the_class_and_the_supported_ones(key):
    model, _ = diffusers_zoo.build(key)
    before = _snapshot(model)
    with pytest.raises(ValueError, match=f"cannot merge tokens in {key}.*supported diffusers models are UNet2DConditionModel, ControlNetModel"):
        tomesd.apply_patch(model)
    assert not tomesd.is_patched(model)
    _assert_same_as(model, before)


def _observed(unet, size, **options):
    """(tokens entering attn1, ff) per merged block, as seen by hooks registered after tomesd's."""
    tomesd.apply_patch(unet, **options)
    seen = _token_counts(unet, lambda: _run(unet, _inputs(size=size)), ("attn1", "ff"))
    tomesd.remove_patch(unet)
    return seen


@pytest.mark.parametrize("size,options", [
    (16, {"min_tokens": 0}),
    (32, {}),  # defaults: 1024-token blocks only
    (16, {"min_tokens": 0, "max_downsample": 1, "merge_mlp": False}),
    (17, {"min_tokens": 0, "sx": 3, "sy": 3, "ratio": 0.85}),  # level 1: local matching capped by the leftovers
    (6, {"min_tokens": 0, "sx": 4, "sy": 4}),  # level 2 is 3x3: no 4x4 cell, runs unmerged
])
def test_merge_report_predicts_the_token_counts_the_hooks_produce(size, options):
    unet = tiny.unet()
    report = merge_report(unet, (size, size), **options)
    seen = _observed(unet, size, **options)
    # attn1 and ff are called once per block, in module order: compare block by block
    assert [r.tokens - r.merged if "attn1" in r.submodules else r.tokens for r in report] == seen["attn1"]
    assert [r.tokens - r.merged if "ff" in r.submodules else r.tokens for r in report] == seen["ff"]
    assert all(r.effective_ratio == r.merged / r.tokens for r in report)
    assert all(bool(r.reason) != bool(r.submodules) for r in report)


def test_a_ratio_above_what_the_strides_allow_warns_and_reports_the_effective_ratio():
    unet = tiny.unet()
    with pytest.warns(UserWarning, match=r"ratio=0.9 is more than sx=2, sy=2 allow.*at most 0.75"):
        report = merge_report(unet, (16, 16), ratio=0.9, min_tokens=0)
    assert {r.effective_ratio for r in report} == {0.75} and {r.requested_ratio for r in report} == {0.9}
    with pytest.warns(UserWarning, match="the effective ratio"):
        seen = _observed(unet, 16, ratio=0.9, min_tokens=0)
    assert sorted(set(seen["attn1"])) == [16, 64]  # a quarter of 64 and 256 tokens stays
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tomesd.apply_patch(unet, ratio=0.75, min_tokens=0)  # at the cap: no warning


def test_a_capped_ratio_warns_once_per_call_at_the_callers_line():
    unet = tiny.unet()
    for call in (lambda: tomesd.apply_patch(unet, ratio=0.9, min_tokens=0),
                 lambda: merge_report(unet, (16, 16), ratio=0.9, min_tokens=0)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        assert [w.filename for w in caught] == [__file__], [str(w.message) for w in caught]


def test_merge_report_explains_why_a_block_runs_unmerged():
    unet = tiny.unet()
    reasons = {r.reason for r in merge_report(unet, (16, 16))}
    assert reasons == {"256 tokens < min_tokens=1024", "64 tokens < min_tokens=1024"}
    reasons = {r.level: r.reason for r in merge_report(unet, (16, 16), max_downsample=1, min_tokens=0)}
    assert reasons == {1: "", 2: "level above max_downsample=1"}
    assert {r.reason for r in merge_report(unet, (16, 16), ratio=0.0)} == {"ratio 0"}


def test_merge_report_on_a_pipeline_covers_the_unet_and_the_controlnet(tmp_path):
    pipe = tiny.PIPELINES["controlnet"](tmp_path)
    models = {r.model for r in merge_report(pipe, (8, 8), min_tokens=0)}
    assert models == {"UNet2DConditionModel", "ControlNetModel"}


def test_hooks_are_small_objects_so_a_patched_model_pickles_and_runs_the_same():
    unet = tiny.unet()
    tomesd.apply_patch(unet, ratio=0.5, min_tokens=0)
    hooks = [h for m in unet.modules() for h in (*m._forward_pre_hooks.values(), *m._forward_hooks.values())]
    assert hooks and not any(getattr(h, "__closure__", None) for h in hooks)
    copy = pickle.loads(pickle.dumps(unet))
    inputs = _inputs()
    assert torch.equal(_run(copy, inputs), _run(unet, inputs))


def test_every_controlnet_of_a_multi_controlnet_is_patched():
    from diffusers import MultiControlNetModel

    base = tiny.unet()
    multi = MultiControlNetModel([tiny.controlnet(base, seed=1), tiny.controlnet(base, seed=2)])
    report = merge_report(multi, (8, 8), min_tokens=0)
    assert [r.model for r in report].count("ControlNetModel") == 2 * sum(
        type(m).__name__ == "BasicTransformerBlock" for m in multi.nets[0].modules())
    tomesd.apply_patch(multi, ratio=0.5, min_tokens=0)
    assert all(hasattr(net, "_tomesd_context") for net in multi.nets)
    tomesd.remove_patch(multi)
    assert not any(hasattr(net, "_tomesd_context") for net in multi.nets)
