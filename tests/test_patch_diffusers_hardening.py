"""Inputs the diffusers patch once accepted and then tripped on (issue #17 items 3 and 12).

Each test failed on the code before this change: a grid too small for one sy x sx cell raised an internal
index_select error mid-forward; fused QKV projections raised AttributeError ('to_kv') with kv_downsample=2.
Exact where nothing merges (torch.equal with the unpatched model); tolerances where fused and unfused
projections differ only in float rounding.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

import tiny
import tomesd
from test_patch_diffusers import _run, _token_counts
from tomesd.patch.diffusers import merge_report


def _inputs(h, w, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, h, w, generator=g), torch.tensor(500), torch.randn(batch, 7, tiny.TEXT_DIM, generator=g)


@pytest.mark.parametrize("h,w,sx,sy,merges", [
    (1, 1, 2, 2, False),  # 8x8 px in SD: a 1x1 latent
    (16, 16, 64, 64, False),  # strides larger than every grid
    (2, 64, 2, 2, True),  # an extreme aspect ratio: level 2 is 1x32, no 2x2 cell; level 1 merges
    (16, 16, 8, 8, True),  # level 1 holds 4 cells, level 2 one
])
def test_blocks_whose_grid_cannot_hold_one_cell_run_unmerged(h, w, sx, sy, merges):
    unet = tiny.unet()
    inputs = _inputs(h, w)
    base = _run(unet, inputs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the native-size warning, tested below
        tomesd.apply_patch(unet, ratio=0.5, min_tokens=0, sx=sx, sy=sy)
    out = _run(unet, inputs)
    seen = _token_counts(unet, lambda: _run(unet, inputs), ("attn1",))["attn1"]
    report = merge_report(unet, (h, w), ratio=0.5, min_tokens=0, sx=sx, sy=sy)
    assert seen == [r.tokens - r.merged for r in report]  # what merges is what the report says
    for r in report:
        assert (r.merged == 0) == (r.grid[0] < sy or r.grid[1] < sx)
        assert r.merged or "holds no" in r.reason
    if merges:
        assert torch.isfinite(out).all() and not torch.equal(out, base)
    else:
        assert torch.equal(out, base)


def test_apply_warns_when_no_block_can_merge_at_the_native_size():
    unet = tiny.unet()  # sample_size 16: grids 16x16 and 8x8
    with pytest.warns(UserWarning, match=r"native latent size 16x16, no block's token grid holds one 32x32 cell"):
        tomesd.apply_patch(unet, sx=32, sy=32, min_tokens=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tomesd.apply_patch(unet, sx=16, sy=16, min_tokens=0)  # level 1 holds one cell: no warning


@pytest.mark.parametrize("fuse_first", [True, False])
def test_fused_qkv_projections_merge_without_pooled_keys(fuse_first):
    inputs = _inputs(16, 16)
    reference = tiny.unet()
    tomesd.apply_patch(reference, ratio=0.5, min_tokens=0, kv_downsample=1)
    expected = _run(reference, inputs)
    unet = tiny.unet()
    if fuse_first:
        unet.fuse_qkv_projections()
    tomesd.apply_patch(unet, ratio=0.5, min_tokens=0, kv_downsample=2)
    if not fuse_first:
        unet.fuse_qkv_projections()  # e.g. pipe.fuse_qkv_projections() after patching
    seen = _token_counts(unet, lambda: _run(unet, inputs), ("attn1",))["attn1"]
    assert 128 in seen  # merging still happens
    torch.testing.assert_close(_run(unet, inputs), expected, rtol=1e-4, atol=1e-5)  # fused vs separate matmuls
    assert {r.kv_tokens for r in merge_report(unet, (16, 16), min_tokens=0)} == {256, 64}  # unpooled


class StrictSelfAttention(AttnProcessor2_0):
    """A processor that takes any encoder_hidden_states as cross-attention and refuses it in attn1."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        if not attn.is_cross_attention and encoder_hidden_states is not None:
            raise RuntimeError("self-attention given encoder_hidden_states")
        return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)


def test_a_custom_processor_never_gets_pooled_keys_as_encoder_hidden_states():
    unet = tiny.unet()
    unet.set_attn_processor(StrictSelfAttention())
    tomesd.apply_patch(unet, ratio=0.5, min_tokens=0, kv_downsample=2)
    inputs = _inputs(16, 16)
    assert 128 in _token_counts(unet, lambda: _run(unet, inputs), ("attn1",))["attn1"]
