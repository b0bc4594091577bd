"""Property test of the diffusers patch (hypothesis): random grid sizes, strides, ratios, batch sizes,
matchings and dtypes on one tiny U-Net.

For every draw: never an internal error; ratio 0 exact (torch.equal with the unpatched model); the tokens
entering every self-attention and MLP are exactly what merge_report documents (tokens - merged, with
merged = min(int(tokens * ratio), what the strides allow), 0 where the grid holds no cell).
"""

from __future__ import annotations

import warnings

import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tiny
import tomesd
from test_patch_diffusers import _token_counts
from tomesd.patch.diffusers import merge_report

# Built once: hypothesis runs many examples, each patches and unpatches it. Casting it to bfloat16 and back
# rounds its weights; harmless, as each example compares patched and unpatched runs of the same weights.
UNET = tiny.unet()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)
@given(
    h=st.integers(1, 20), w=st.integers(1, 20), sx=st.integers(1, 5), sy=st.integers(1, 5),
    ratio=st.floats(0, 0.95), batch=st.integers(1, 3), matching=st.sampled_from(["local", "global"]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]), kv=st.integers(1, 3), share=st.booleans(),
)
@example(h=16, w=16, sx=2, sy=2, ratio=0.0, batch=2, matching="local", dtype=torch.float32, kv=2, share=False)
@example(h=1, w=20, sx=2, sy=2, ratio=0.5, batch=1, matching="global", dtype=torch.float32, kv=3, share=True)
def test_any_grid_stride_ratio_and_batch_runs_and_merges_as_documented(h, w, sx, sy, ratio, batch, matching, dtype, kv, share):
    unet = UNET.to(dtype)
    g = torch.Generator().manual_seed(h * 100 + w)
    inputs = (torch.randn(batch, 4, h, w, generator=g).to(dtype), torch.tensor(321),
              torch.randn(batch, 7, tiny.TEXT_DIM, generator=g).to(dtype))
    options = dict(ratio=ratio, sx=sx, sy=sy, min_tokens=0, matching=matching, kv_downsample=kv, share_frames=share)
    with torch.no_grad():
        base = UNET(*inputs).sample
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ratios above the strides' cap warn; that is tested elsewhere
            tomesd.apply_patch(unet, **options)
            report = merge_report(unet, (h, w), **options)
        try:
            seen = _token_counts(unet, lambda: unet(*inputs), ("attn1", "ff"))
            out = unet(*inputs).sample
        finally:
            tomesd.remove_patch(unet)
    expected = [r.tokens - r.merged for r in report]
    assert seen["attn1"] == expected and seen["ff"] == expected
    for r in report:
        cells = (r.grid[0] // sy) * (r.grid[1] // sx)
        cap = 0 if cells == 0 else (cells * (sx * sy - 1) if matching == "local" else r.tokens - cells)
        assert r.merged == min(int(r.tokens * ratio), cap)
    assert out.shape == base.shape and out.dtype == dtype and torch.isfinite(out).all()
    if all(r.merged == 0 for r in report):  # includes ratio 0: exact
        assert torch.equal(out, base)
