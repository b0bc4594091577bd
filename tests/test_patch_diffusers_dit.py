"""Token merging in diffusion transformers: PixArt, DiT, SD3/SD3.5, Flux.1, Wan 2.x (and Sana's refusal).

Exact (torch.equal) where it must hold: ratio 0 and remove_patch are bit-identical to the unpatched model,
the rotary tables follow the merged tokens row for row, a Flux single-stream block equals its by-hand
computation. Tolerances only where merging approximates (the output deviation of a patched model).
"""

from __future__ import annotations

import copy
import pickle
import warnings

import numpy as np
import pytest
import torch

import diffusers_zoo
import tomesd
from test_patch_diffusers import _assert_same_as, _snapshot
from tomesd.merge import bipartite_soft_matching_random2d
from tomesd.patch.diffusers import merge_report
from tomesd.patch.diffusers.dit import FramedPlan, RotaryMergeInput, merged_positions
from tomesd.patch.diffusers.hooks import SITE

#: every supported family, by zoo key (a second layout of a class after the colon)
FAMILIES = [
    "PixArtTransformer2DModel", "DiTTransformer2DModel", "SD3Transformer2DModel", "SD3Transformer2DModel:sd35",
    "FluxTransformer2DModel", "FluxTransformer2DModel:guidance", "WanTransformer3DModel", "WanTransformer3DModel:i2v",
    "WanTransformer3DModel:ti2v",
]
ALL = {"min_tokens": 0, "merge_crossattn": True}  # every block and every merge point of the tiny models


def _out(model, kwargs):
    return model(**kwargs, return_dict=False)[0]


class TokenLog:
    """Tokens entering each named submodule of every block of ``blocks`` (a class name), as seen after
    tomesd's hooks (registered later, so they see the merged input)."""

    def __init__(self, model, block, names):
        self.seen = {name: [] for name in names}
        self.handles = [
            getattr(module, name).register_forward_pre_hook(self._record(name), with_kwargs=True)
            for module in model.modules() if type(module).__name__ == block
            for name in names if getattr(module, name, None) is not None
        ]

    def _record(self, name):
        def hook(module, args, kwargs):
            self.seen[name].append((args[0] if args else kwargs["hidden_states"]).shape[1])

        return hook

    def __enter__(self):
        return self.seen

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


# --- exactness -------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", FAMILIES)
def test_ratio_zero_is_bit_identical(key):
    model, kwargs = diffusers_zoo.build(key)
    with torch.no_grad():
        base = _out(model, kwargs)
        tomesd.apply_patch(model, ratio=0.0, **ALL)
        assert torch.equal(_out(model, kwargs), base)


@pytest.mark.parametrize("key", FAMILIES)
def test_remove_patch_restores_outputs_state_and_attributes_exactly(key):
    model, kwargs = diffusers_zoo.build(key)
    before = _snapshot(model)
    with torch.no_grad():
        base = _out(model, kwargs)
        tomesd.apply_patch(model, ratio=0.5, **ALL)
        patched = _out(model, kwargs)
        tomesd.remove_patch(model)
        restored = _out(model, kwargs)
    assert not torch.equal(patched, base)
    # random weights: the patched output stays near the unpatched one (relative L2)
    assert (patched - base).norm() / base.norm() < 0.25
    _assert_same_as(model, before)
    assert torch.equal(restored, base)


@pytest.mark.parametrize("key", ["PixArtTransformer2DModel", "SD3Transformer2DModel:sd35", "FluxTransformer2DModel",
                                 "WanTransformer3DModel"])
def test_a_patched_transformer_pickles_and_deep_copies_with_its_own_patch(key):
    model, kwargs = diffusers_zoo.build(key)
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
    with torch.no_grad():
        patched = _out(model, kwargs)
        loaded, copied = pickle.loads(pickle.dumps(model)), copy.deepcopy(model)
        assert tomesd.is_patched(loaded) and tomesd.is_patched(copied)
        assert torch.equal(_out(loaded, kwargs), patched)  # exact: the same hooks, the same draw
        assert torch.equal(_out(copied, kwargs), patched)
        tomesd.remove_patch(copied)
        assert tomesd.is_patched(model) and torch.equal(_out(model, kwargs), patched)


# --- what merges where -----------------------------------------------------------------------------


def _half(n):
    return n - int(n * 0.5)


@pytest.mark.parametrize("key,block,expected", [
    # 16x16 latent, patch 2: 64 tokens; text (8 tokens) is a separate input of attn2
    ("PixArtTransformer2DModel", "BasicTransformerBlock", {"attn1": [32] * 2, "attn2": [32] * 2, "ff": [32] * 2}),
    ("DiTTransformer2DModel", "BasicTransformerBlock", {"attn1": [32] * 2, "ff": [32] * 2}),
    # the text stream stays whole: ff_context sees all 8 text tokens (the last block has none)
    ("SD3Transformer2DModel:sd35", "JointTransformerBlock",
     {"attn": [32] * 3, "attn2": [32] * 2, "ff": [32] * 3, "ff_context": [8] * 2}),
    # single-stream attention runs on 8 text + 32 merged image tokens
    ("FluxTransformer2DModel", "FluxTransformerBlock", {"attn": [32], "ff": [32], "ff_context": [8]}),
    ("FluxTransformer2DModel", "FluxSingleTransformerBlock", {"attn": [8 + 32], "proj_mlp": [8 + 32]}),
    # 4x6 packed tokens: windows of 4 consecutive tokens, 12 merge away
    ("FluxTransformer2DModel:guidance", "FluxSingleTransformerBlock", {"attn": [8 + 12] * 2}),
    # 2 frames of 8x8: each frame merges half its tokens
    ("WanTransformer3DModel", "WanTransformerBlock", {"attn1": [64] * 2, "attn2": [64] * 2, "ffn": [64] * 2}),
    ("WanTransformer3DModel:ti2v", "WanTransformerBlock", {"attn1": [64] * 2, "ffn": [64] * 2}),
])
def test_merging_happens_in_the_listed_submodules(key, block, expected):
    model, kwargs = diffusers_zoo.build(key)
    tomesd.apply_patch(model, ratio=0.5, **ALL)
    with TokenLog(model, block, expected) as seen, torch.no_grad():
        _out(model, kwargs)
    assert seen == expected


def test_merge_switches_and_min_tokens_apply_to_transformers_too():
    model, kwargs = diffusers_zoo.build("PixArtTransformer2DModel")
    names = ("attn1", "attn2", "ff")
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0)  # defaults: attn1 and ff, not attn2
    with TokenLog(model, "BasicTransformerBlock", names) as seen, torch.no_grad():
        _out(model, kwargs)
    assert seen == {"attn1": [32] * 2, "attn2": [64] * 2, "ff": [32] * 2}
    tomesd.apply_patch(model, ratio=0.5)  # min_tokens=1024: a 64-token model runs unmerged
    with TokenLog(model, "BasicTransformerBlock", names) as seen, torch.no_grad():
        _out(model, kwargs)
    assert seen == {name: [64] * 2 for name in names}


@pytest.mark.parametrize("key,expected", [
    ("PixArtTransformer2DModel", [(64, (8, 8), 32, ("attn1", "ff"))] * 2),
    # Flux: the VAE latent's size; the report shows the packed 8x8 grid (its windows merge as many here)
    ("FluxTransformer2DModel", [(64, (8, 8), 32, ("attn", "ff")), (64, (8, 8), 32, ("norm",))]),
    # Wan: per frame
    ("WanTransformer3DModel", [(64, (8, 8), 32, ("attn1", "ffn"))] * 2),
])
def test_merge_report_predicts_the_token_counts(key, expected):
    model, _ = diffusers_zoo.build(key)
    report = merge_report(model, (16, 16), ratio=0.5, min_tokens=0)
    assert [(r.tokens, r.grid, r.merged, r.submodules) for r in report] == expected


# --- rotary tables follow the merged tokens ------------------------------------------------------------


class RotaryLog:
    """The rotary table each hooked attention receives, with the plan tomesd's hook merged by."""

    def __init__(self, model, block, attention, position, keyword):
        self.calls = []
        self.handles = []
        for module in model.modules():
            if type(module).__name__ == block:
                sub = getattr(module, attention)
                assert any(isinstance(h, RotaryMergeInput) for h in sub._forward_pre_hooks.values())
                self.handles.append(sub.register_forward_pre_hook(self._record(position, keyword), with_kwargs=True))

    def _record(self, position, keyword):
        def hook(module, args, kwargs):
            table = args[position] if len(args) > position else kwargs[keyword]
            self.calls.append((getattr(module, SITE).plan, table))  # the plan tomesd's pre-hook merged by

        return hook

    def __enter__(self):
        return self.calls

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _representatives(plan):
    """Per batch element, (original position, merged row) of every token that stands for its row: kept,
    unmerged candidates and destinations (merged-away candidates share their destination's row)."""
    rows = plan.rows  # (B, N)
    merged_away = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, plan.src_idx[plan.merged], True)
    return [(torch.arange(rows.shape[1])[~merged_away[b]], rows[b][~merged_away[b]]) for b in range(rows.shape[0])]


def test_flux_rotary_rows_take_the_position_of_the_token_they_stand_for():
    model, kwargs = diffusers_zoo.build("FluxTransformer2DModel")
    full = model.pos_embed(torch.cat([kwargs["txt_ids"], kwargs["img_ids"]]))  # (cos, sin), (T + N, D) each
    text = kwargs["txt_ids"].shape[0]
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
    with RotaryLog(model, "FluxTransformerBlock", "attn", 3, "image_rotary_emb") as calls, torch.no_grad():
        _out(model, kwargs)
    (plan, table), = calls
    assert plan.unm.shape[0] == 1 and table[0].shape == (text + 32, full[0].shape[1])  # 2-D: one plan per batch
    (positions, rows), = _representatives(plan)
    for got, want in zip(table, full):
        assert torch.equal(got[:text], want[:text])  # text rows untouched
        assert torch.equal(got[text + rows], want[text + positions])
    assert torch.equal(merged_positions(plan)[0][rows], positions)


def test_wan_rotary_rows_are_gathered_per_sample():
    model, kwargs = diffusers_zoo.build("WanTransformer3DModel")
    kwargs = {**kwargs, "hidden_states": torch.cat([kwargs["hidden_states"], kwargs["hidden_states"].flip(-1)]),
              "timestep": kwargs["timestep"].repeat(2), "encoder_hidden_states": kwargs["encoder_hidden_states"].repeat(2, 1, 1)}
    full = model.rope(kwargs["hidden_states"])  # (1, N, 1, D) each
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
    with RotaryLog(model, "WanTransformerBlock", "attn1", 3, "rotary_emb") as calls, torch.no_grad():
        _out(model, kwargs)
    plan, table = calls[0]
    assert isinstance(plan, FramedPlan) and table[0].shape == (2, 64, 1, full[0].shape[-1])
    positions = plan.positions()  # (B, 64) positions in the whole 2-frame sequence
    assert not torch.equal(positions[0], positions[1])  # the two samples were matched on their own
    for got, want in zip(table, full):
        assert torch.equal(got, want[0][positions])
    frame = positions // 64
    assert torch.equal(frame, torch.arange(2).repeat_interleave(32).expand(2, -1))  # frames stay apart, in order


def test_framed_plan_merges_each_frame_on_its_own():
    torch.manual_seed(0)
    frames, h, w, channels = 3, 4, 4, 5
    x = torch.randn(2, frames * h * w, channels)
    x[..., 0] = torch.arange(frames).repeat_interleave(h * w).float()  # channel 0 = frame index
    plan = FramedPlan(bipartite_soft_matching_random2d(x.reshape(2 * frames, h * w, channels), w, h, 2, 2, 8), frames)
    merged = plan.merge(x)  # (2, 3 * 8, C)
    assert merged.shape == (2, frames * 8, channels) and plan.r == frames * 8
    assert torch.equal(merged[..., 0], torch.arange(frames).repeat_interleave(8).float().expand(2, -1))
    assert torch.equal(plan.unmerge(merged)[..., 0], x[..., 0])
    assert torch.equal(x.gather(1, plan.positions().unsqueeze(-1).expand(-1, -1, channels))[..., 0], merged[..., 0])


# --- Flux single-stream blocks ---------------------------------------------------------------------


def test_flux_single_block_equals_its_by_hand_computation():
    """Merge the image part after ``norm``, attention and MLP on text + merged image (rotary gathered),
    unmerge after ``proj_out``: the hooks must give exactly that."""
    model, kwargs = diffusers_zoo.build("FluxTransformer2DModel")
    block = model.single_transformer_blocks[0]
    captured = {}
    block.register_forward_pre_hook(lambda m, a, k: captured.update(k), with_kwargs=True)
    block.register_forward_hook(lambda m, a, k, out: captured.update(out=out), with_kwargs=True)
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0, use_rand=False, matching="global")
    with torch.no_grad():
        _out(model, kwargs)
        image, text, temb = captured["hidden_states"], captured["encoder_hidden_states"], captured["temb"]
        t = text.shape[1]
        metric = image / image.norm(dim=-1, keepdim=True)
        plan = bipartite_soft_matching_random2d(metric, image.shape[1], 1, 4, 1, 32, None, local=False)
        x = torch.cat([text, image], dim=1)
        normed, gate = block.norm(x, emb=temb)
        short = torch.cat([normed[:, :t], plan.merge(normed[:, t:])], dim=1)  # (1, 8 + 32, C)
        positions = merged_positions(plan)[0]
        rope = tuple(torch.cat([r[:t], r[t:][positions]]) for r in captured["image_rotary_emb"])
        mixed = torch.cat([block.attn(hidden_states=short, image_rotary_emb=rope), block.act_mlp(block.proj_mlp(short))], dim=2)
        y = block.proj_out(mixed)
        y = torch.cat([y[:, :t], plan.unmerge(y[:, t:])], dim=1)
        out = x + gate.unsqueeze(1) * y
    assert torch.equal(captured["out"][0], out[:, :t]) and torch.equal(captured["out"][1], out[:, t:])


def test_flux_plan_is_shared_by_the_batch():
    model, kwargs = diffusers_zoo.build("FluxTransformer2DModel")
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
    twice = {**kwargs, "hidden_states": kwargs["hidden_states"].repeat(2, 1, 1), "timestep": kwargs["timestep"].repeat(2),
             "encoder_hidden_states": kwargs["encoder_hidden_states"].repeat(2, 1, 1),
             "pooled_projections": kwargs["pooled_projections"].repeat(2, 1)}
    with torch.no_grad():
        one, two = _out(model, kwargs), _out(model, twice)
    torch.testing.assert_close(two, one.repeat(2, 1, 1))  # batched matmuls may round differently


# --- attention backends and processors ------------------------------------------------------------


@pytest.mark.parametrize("key,block,submodule", [
    ("FluxTransformer2DModel", "FluxTransformerBlock", "attn"),
    ("WanTransformer3DModel", "WanTransformerBlock", "attn1"),
])
def test_a_dispatcher_backend_keeps_working_and_is_left_as_set(key, block, submodule):
    model, kwargs = diffusers_zoo.build(key)
    model.set_attention_backend("_native_math")
    backends = [m._attention_backend for m in model.modules() if hasattr(m, "_attention_backend")]
    with torch.no_grad():
        base = _out(model, kwargs)
        tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
        with TokenLog(model, block, (submodule,)) as seen:
            _out(model, kwargs)
        tomesd.remove_patch(model)
        assert torch.equal(_out(model, kwargs), base)
    assert seen[submodule] and all(n < 64 * (2 if key.startswith("Wan") else 1) for n in seen[submodule])
    assert [m._attention_backend for m in model.modules() if hasattr(m, "_attention_backend")] == backends


@pytest.mark.parametrize("key", ["SD3Transformer2DModel", "FluxTransformer2DModel", "PixArtTransformer2DModel"])  # SD3.5 fused fails in diffusers itself
def test_fused_qkv_projections_merge_and_restore(key):
    model, kwargs = diffusers_zoo.build(key)
    model.fuse_qkv_projections()
    before = _snapshot(model)
    with torch.no_grad():
        base = _out(model, kwargs)
        tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
        patched = _out(model, kwargs)
        tomesd.remove_patch(model)
        assert torch.equal(_out(model, kwargs), base)
    assert not torch.equal(patched, base) and torch.isfinite(patched).all()
    _assert_same_as(model, before)


# --- training, compile ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", FAMILIES)
def test_forward_and_backward_with_the_patch_on(key):
    model, kwargs = diffusers_zoo.build(key)
    model.train()
    tomesd.apply_patch(model, ratio=0.5, **ALL)
    out = _out(model, kwargs)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is None or torch.isfinite(g).all() for g in grads)
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > len(grads) // 2


@pytest.mark.parametrize("key", ["PixArtTransformer2DModel", "SD3Transformer2DModel:sd35", "FluxTransformer2DModel",
                                 "WanTransformer3DModel"])
def test_gradient_checkpointing_calls_blocks_positionally_and_merges_the_same(key):
    model, kwargs = diffusers_zoo.build(key)
    model.train()
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
    plain = _out(model, kwargs)
    model.enable_gradient_checkpointing()
    checkpointed = _out(model, kwargs)
    checkpointed.square().mean().backward()  # the recomputation draws the same destinations
    assert torch.equal(checkpointed, plain)
    tomesd.remove_patch(model)
    assert not torch.equal(_out(model, kwargs), plain)  # so the patch was merging


@pytest.mark.parametrize("key", ["PixArtTransformer2DModel", "SD3Transformer2DModel:sd35", "FluxTransformer2DModel",
                                 "WanTransformer3DModel"])
def test_fullgraph_compile_of_a_patched_transformer_matches_eager(key):
    model, kwargs = diffusers_zoo.build(key)
    tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = _out(model, kwargs)
        compiled = torch.compile(model, backend="eager", fullgraph=True)  # any graph break raises
        assert torch.equal(_out(compiled, kwargs), eager)


@pytest.mark.parametrize("key", ["FluxTransformer2DModel", "WanTransformer3DModel"])
def test_a_compiled_transformer_re_patched_with_other_options_recompiles(key):
    model, kwargs = diffusers_zoo.build(key)
    with torch.no_grad():
        base = _out(model, kwargs)
        tomesd.apply_patch(model, ratio=0.5, min_tokens=0)
        eager = _out(model, kwargs)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        assert torch.equal(_out(compiled, kwargs), eager)
        tomesd.apply_patch(model, ratio=0.5, min_tokens=0, merge_attn=False, merge_mlp=False)  # merges nothing
        assert torch.equal(_out(compiled, kwargs), base)  # not the stale merging graph
    torch._dynamo.reset()


# --- Sana, pipelines -------------------------------------------------------------------------------


def test_sana_is_refused_at_apply_time_with_the_reason(tmp_path):
    model, _ = diffusers_zoo.build("SanaTransformer2DModel")
    before = _snapshot(model)
    with pytest.raises(ValueError, match="SanaTransformer2DModel: Sana's self-attention is linear.*convolution"):
        tomesd.apply_patch(model)
    assert not tomesd.is_patched(model)
    _assert_same_as(model, before)
    pipe, _ = diffusers_zoo.PIPELINES["SanaPipeline"](tmp_path)
    with pytest.raises(ValueError, match="SanaTransformer2DModel"):
        tomesd.apply_patch(pipe)
    # merge_report refuses it alike, before any word about a capped ratio (the refusal is the news)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="SanaTransformer2DModel: Sana's self-attention is linear"):
            merge_report(model, (32, 32), ratio=0.9)


@pytest.mark.parametrize("name,block,submodule", [
    ("PixArtSigmaPipeline", "BasicTransformerBlock", "attn1"),
    ("StableDiffusion3Pipeline", "JointTransformerBlock", "attn"),
    ("FluxPipeline", "FluxTransformerBlock", "attn"),
    ("WanPipeline", "WanTransformerBlock", "attn1"),
])
def test_pipelines_run_end_to_end_patched_and_restore_exactly(name, block, submodule, tmp_path):
    pipe, call = diffusers_zoo.PIPELINES[name](tmp_path)
    pipe.set_progress_bar_config(disable=True)
    call = {**call, "output_type": "np"}

    def run():
        output = pipe(**call, generator=torch.Generator().manual_seed(0))
        return np.asarray(output.frames if "num_frames" in call else output.images)

    base = run()
    unmerged = TokenLog(pipe.transformer, block, (submodule,))
    with unmerged as full:
        run()
    tomesd.apply_patch(pipe, ratio=0.5, min_tokens=0)
    with TokenLog(pipe.transformer, block, (submodule,)) as seen:
        patched = run()
    assert all(m == _half(n) for m, n in zip(seen[submodule], full[submodule])) and seen[submodule]
    assert patched.shape == base.shape and np.isfinite(patched).all()
    assert not (patched == base).all()
    tomesd.remove_patch(pipe)
    assert (run() == base).all()
