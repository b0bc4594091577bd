"""Video U-Nets (AnimateDiff, SVD, text-to-video UNet3D, I2VGen-XL) on tiny seeded configs.

Spatial blocks merge per frame; motion/temporal blocks (tokens = frames) are left alone. Exact
(torch.equal) at ratio 0 and after remove_patch; token counts for what merges; tolerances nowhere needed.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import tiny
import tomesd
from test_patch_diffusers import TokenLog, _assert_same_as, _snapshot, _token_counts
from tomesd.patch.diffusers import merge_report

KINDS = ["motion", "svd", "unet3d", "i2vgen"]
ANY = {"min_tokens": 0}


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs).sample


@pytest.mark.parametrize("kind", KINDS)
def test_ratio_zero_and_remove_patch_are_bit_identical(kind):
    model, inputs = tiny.video_unet(kind), tiny.video_inputs(kind)
    base = _run(model, inputs)
    before = _snapshot(model)
    tomesd.apply_patch(model, ratio=0.0, merge_crossattn=True, **ANY)
    assert torch.equal(_run(model, inputs), base)
    tomesd.apply_patch(model, ratio=0.5, merge_crossattn=True, **ANY)
    assert not torch.equal(_run(model, inputs), base)
    tomesd.remove_patch(model)
    _assert_same_as(model, before)
    assert torch.equal(_run(model, inputs), base)


@pytest.mark.parametrize("kind", KINDS)
def test_spatial_blocks_merge_per_frame_and_temporal_blocks_are_left_alone(kind):
    model, inputs = tiny.video_unet(kind), tiny.video_inputs(kind)  # 16x16 latent: 256 and 64 tokens a frame
    base = _token_counts(model, lambda: _run(model, inputs), ("attn1", "ff"))
    tomesd.apply_patch(model, ratio=0.5, **ANY)
    seen = _token_counts(model, lambda: _run(model, inputs), ("attn1", "ff"))
    temporal = [n for n in base["attn1"] if n == tiny.FRAMES]  # the motion blocks attend over the 3 frames
    assert (len(temporal) > 0) == (kind != "svd")  # SVD's temporal blocks are another class
    for name in ("attn1", "ff"):
        assert sorted(set(base[name])) == sorted({256, 64} | set(temporal))
        assert sorted(set(seen[name])) == sorted({128, 32} | set(temporal))
        assert seen[name].count(tiny.FRAMES) == base[name].count(tiny.FRAMES)


@pytest.mark.parametrize("kind", KINDS)
def test_backward_with_the_patch_on(kind):
    model, inputs = tiny.video_unet(kind).train(), tiny.video_inputs(kind)
    tomesd.apply_patch(model, ratio=0.5, **ANY)
    model(**inputs).sample.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


class PlanLog(TokenLog):
    """The merge plan each spatial self-attention used, read from tomesd's site after its pre-hook ran."""

    def __init__(self, model):
        super().__init__(model, ("attn1",))
        self.rows: list[torch.Tensor] = []

    def _record(self, name):
        def hook(module, args, kwargs):
            site = getattr(module, "_tomesd_site", None)
            if site is not None and site.plan is not None:
                self.rows.append(site.plan.rows)

        return hook


@pytest.mark.parametrize("kind", ["motion", "svd"])
def test_share_frames_merges_every_frame_of_a_clip_alike(kind):
    model, inputs = tiny.video_unet(kind), tiny.video_inputs(kind)
    for share in (False, True):
        tomesd.apply_patch(model, ratio=0.5, share_frames=share, **ANY)
        log = PlanLog(model)
        out = _run(model, inputs)
        log.close()
        assert log.rows and torch.isfinite(out).all()
        for rows in log.rows:  # (B * F, N): the row of the merged sequence each token goes to
            clips = rows.unflatten(0, (-1, tiny.FRAMES))
            alike = bool((clips == clips[:, :1]).all())
            assert alike == share  # random frames: separate plans differ, a shared one is the same


def _animatediff_call(pipe):
    return pipe(prompt="a red circle", num_frames=tiny.FRAMES, num_inference_steps=2, height=32, width=32,
                output_type="np", generator=torch.Generator().manual_seed(0)).frames


def _svd_call(pipe):
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    return pipe(image, num_frames=tiny.FRAMES, num_inference_steps=2, height=32, width=32, decode_chunk_size=tiny.FRAMES,
                output_type="np", generator=torch.Generator().manual_seed(0)).frames


@pytest.mark.parametrize("build,call", [(tiny.animatediff_pipeline, _animatediff_call), (tiny.svd_pipeline, _svd_call)],
                         ids=["animatediff", "svd"])
def test_video_pipelines_run_end_to_end_patched_and_restore_exactly(build, call, tmp_path):
    pipe = build(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    base = call(pipe)
    tomesd.apply_patch(pipe, ratio=0.5, **ANY)
    assert tomesd.is_patched(pipe)
    seen = _token_counts(pipe.unet, lambda: call(pipe), ("attn1",))["attn1"]
    assert 128 in seen and 256 not in seen  # the 16x16 latent's spatial blocks merge
    patched = call(pipe)
    assert patched.shape == base.shape and not (patched == base).all()
    assert abs(patched - base).mean() < 0.1  # random weights, two steps: frames move a little (values in [0, 1])
    tomesd.remove_patch(pipe)
    assert (call(pipe) == base).all()


@pytest.mark.parametrize("kind", KINDS)  # a shared plan compiles in the merge_temporal test below
def test_fullgraph_compile_with_the_patch_on_matches_eager(kind):
    # Any graph break raises under fullgraph=True; the eager backend runs the traced graph op for op, so
    # it must give eager's very numbers (the same destinations: the draw is traced, not taken on the host).
    model, inputs = tiny.video_unet(kind), tiny.video_inputs(kind)
    tomesd.apply_patch(model, ratio=0.5, **ANY)
    torch.compiler.reset()
    try:
        eager = _run(model, inputs)
        compiled = torch.compile(model, backend="eager", fullgraph=True)
        assert torch.equal(_run(compiled, inputs), eager)
        if kind == "motion":  # another setting is guarded, so never the stale graph (once: it recompiles)
            tomesd.apply_patch(model, ratio=0.0, **ANY)
            assert torch.equal(_run(compiled, inputs), _run(model, inputs))
    finally:
        torch.compiler.reset()


# --- merge_temporal: AnimateDiff's motion modules on merged places -----------------------------------------


def _motion_rows(model, inputs):
    """The rows (batch x places) each motion module's transformer sees, in call order."""
    rows = []
    handles = [module.proj_in.register_forward_pre_hook(lambda m, a, k: rows.append(k["input"].shape[0]), with_kwargs=True)
               for module in model.modules() if type(module).__name__ == "AnimateDiffTransformer3D"]
    _run(model, inputs)
    for handle in handles:
        handle.remove()
    return rows


def test_merge_temporal_runs_the_motion_modules_on_the_merged_places_the_report_predicts():
    model, inputs = tiny.video_unet("motion"), tiny.video_inputs("motion")  # batch 2, 16x16 latent
    full = _motion_rows(model, inputs)
    tomesd.apply_patch(model, ratio=0.5, merge_temporal=False, **ANY)
    assert _motion_rows(model, inputs) == full  # switched off: every place
    tomesd.apply_patch(model, ratio=0.5, **ANY)  # on by default
    report = [r for r in merge_report(model, (16, 16), ratio=0.5, **ANY) if "motion" in r.name]
    assert len(report) == len(full) and all(r.submodules == ("the whole motion module",) for r in report)
    assert _motion_rows(model, inputs) == [2 * (r.tokens - r.merged) for r in report] == [n // 2 for n in full]
    off = merge_report(model, (16, 16), ratio=0.5, merge_temporal=False, **ANY)
    assert {r.reason for r in off if "motion" in r.name} == {"motion module: merge_temporal=False"}


def test_merge_temporal_keeps_the_skip_connection_exact():
    # With their output projections zeroed, the motion modules add nothing to their input: merged places
    # must then change nothing either (the exit hook removes the merged input and adds the unmerged one).
    model, inputs = tiny.video_unet("motion"), tiny.video_inputs("motion")
    for module in model.modules():
        if type(module).__name__ == "AnimateDiffTransformer3D":
            torch.nn.init.zeros_(module.proj_out.weight)
            torch.nn.init.zeros_(module.proj_out.bias)
    tomesd.apply_patch(model, ratio=0.5, merge_temporal=False, **ANY)
    spatial_only = _run(model, inputs)
    tomesd.apply_patch(model, ratio=0.5, merge_temporal=True, **ANY)
    assert torch.equal(_run(model, inputs), spatial_only)


def test_merge_temporal_is_exact_at_ratio_zero_and_after_removal_and_trains_and_compiles():
    model, inputs = tiny.video_unet("motion"), tiny.video_inputs("motion")
    base = _run(model, inputs)
    tomesd.apply_patch(model, ratio=0.0, merge_temporal=True, **ANY)
    assert torch.equal(_run(model, inputs), base)
    tomesd.apply_patch(model, ratio=0.5, merge_temporal=True, share_frames=True, **ANY)
    eager = _run(model, inputs)
    torch.compiler.reset()
    try:
        assert torch.equal(_run(torch.compile(model, backend="eager", fullgraph=True), inputs), eager)
    finally:
        torch.compiler.reset()
    model.train()
    model(**inputs).sample.square().mean().backward()
    motion = [p.grad for n, p in model.named_parameters() if "motion_modules" in n and p.grad is not None]
    assert motion and all(torch.isfinite(g).all() for g in motion)
    tomesd.remove_patch(model)
    assert torch.equal(_run(model.eval(), inputs), base)
