"""The diffusers patcher on tiny seeded U-Nets and pipelines built from configs (offline).

Exact (torch.equal) where it must hold: ratio 0, after remove_patch, re-application, determinism.
Approximate where merging approximates: patched outputs stay close to unpatched ones (tolerances below).
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from PIL import Image

import tiny
import tomesd

STEPS = 2
#: The tiny U-Nets have few tokens (256 at a 16x16 latent); the default policy would merge nothing there,
#: so tests of the merging itself lower the threshold.
ANY = {"min_tokens": 0}


def _inputs(batch=2, size=16, text=tiny.TEXT_DIM, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 4, size, size, generator=g), torch.tensor(500), torch.randn(batch, 7, text, generator=g)


def _run(unet, inputs):
    with torch.no_grad():
        return unet(*inputs).sample


class TokenLog:
    """Records how many tokens enter each sub-module (attn1/attn2/ff) of every transformer block, as seen
    after tomesd's own hooks (registered later, so they run after the merge)."""

    def __init__(self, model, names=("attn1", "attn2", "ff")):
        self.seen: dict[str, list[int]] = {name: [] for name in names}
        self.handles = []
        for module in model.modules():
            if type(module).__name__ == "BasicTransformerBlock":
                for name in names:
                    self.handles.append(getattr(module, name).register_forward_pre_hook(self._record(name), with_kwargs=True))

    def _record(self, name):
        def hook(module, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            self.seen[name].append(x.shape[1])

        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()


def _token_counts(model, run, names=("attn1", "attn2", "ff")):
    log = TokenLog(model, names)
    try:
        run()
    finally:
        log.close()
    return log.seen


def _snapshot(model):
    """Everything a patch could leave behind: attributes, hooks, processors, parameters and buffers."""
    modules = {}
    for name, module in model.named_modules():
        modules[name] = (
            dict(vars(module)),
            {k: v for k, v in module._forward_hooks.items()},
            {k: v for k, v in module._forward_pre_hooks.items()},
            getattr(module, "processor", None),
        )
    return modules, {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_as(model, snapshot):
    modules, state = snapshot
    now_modules, now_state = _snapshot(model)
    assert now_modules.keys() == modules.keys()
    for name, (attrs, hooks, pre_hooks, processor) in modules.items():
        now_attrs, now_hooks, now_pre_hooks, now_processor = now_modules[name]
        assert now_attrs.keys() == attrs.keys(), name
        assert all(now_attrs[k] is attrs[k] for k in attrs if k not in ("_forward_hooks", "_forward_pre_hooks")), name
        assert now_hooks == hooks and now_pre_hooks == pre_hooks, name
        assert now_processor is processor, name
    assert now_state.keys() == state.keys()
    assert all(torch.equal(now_state[k], state[k]) for k in state)


# --- exactness -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl"])
def test_ratio_zero_is_bit_identical(kind):
    unet = tiny.unet(kind)
    inputs = _inputs(text=unet.config.cross_attention_dim)
    kwargs = {}
    if kind == "sdxl":
        kwargs = {"added_cond_kwargs": {"text_embeds": torch.randn(2, tiny.TEXT_DIM), "time_ids": torch.zeros(2, 6)}}
    with torch.no_grad():
        base = unet(*inputs, **kwargs).sample
        tomesd.apply_patch(unet, ratio=0.0, merge_crossattn=True, merge_mlp=True, kv_downsample=2, **ANY)
        assert torch.equal(unet(*inputs, **kwargs).sample, base)


def test_remove_patch_restores_outputs_state_and_attributes_exactly():
    unet = tiny.unet()
    inputs = _inputs()
    base = _run(unet, inputs)
    before = _snapshot(unet)
    tomesd.apply_patch(unet, ratio=0.5, max_downsample=2, merge_crossattn=True, merge_mlp=True, **ANY)
    assert tomesd.is_patched(unet)
    patched = _run(unet, inputs)
    assert not torch.equal(patched, base)
    tomesd.remove_patch(unet)
    assert not tomesd.is_patched(unet)
    _assert_same_as(unet, before)
    assert torch.equal(_run(unet, inputs), base)
    tomesd.remove_patch(unet)  # removing twice is harmless


def test_applying_twice_equals_applying_once_with_the_new_settings():
    unet = tiny.unet()
    inputs = _inputs()
    tomesd.apply_patch(unet, ratio=0.6, merge_mlp=True, **ANY)
    tomesd.apply_patch(unet, ratio=0.3, merge_mlp=False, **ANY)
    twice = _run(unet, inputs)
    counts = _token_counts(unet, lambda: _run(unet, inputs), ("ff",))
    fresh = tiny.unet()
    tomesd.apply_patch(fresh, ratio=0.3, merge_mlp=False, **ANY)
    assert torch.equal(twice, _run(fresh, inputs))
    assert 256 in counts["ff"]  # the first patch's MLP merging is gone


def test_patched_outputs_are_deterministic_and_leave_the_global_rng_alone():
    unet = tiny.unet()
    inputs = _inputs()
    tomesd.apply_patch(unet, ratio=0.5, **ANY)
    torch.manual_seed(7)
    state = torch.random.get_rng_state()
    first = _run(unet, inputs)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(_run(unet, inputs), first)
    tomesd.apply_patch(unet, ratio=0.5, seed=1, **ANY)
    assert not torch.equal(_run(unet, inputs), first)  # another seed draws other destinations


# --- what gets merged ------------------------------------------------------------------------------------


def test_by_default_every_block_with_at_least_min_tokens_merges_and_smaller_ones_do_not():
    unet = tiny.unet()
    inputs = _inputs(size=32)  # 32x32 latent: 1024 tokens at level 1, 256 at level 2
    base = _token_counts(unet, lambda: _run(unet, inputs))
    assert sorted(set(base["attn1"])) == [256, 1024]
    tomesd.apply_patch(unet, ratio=0.5)  # min_tokens=1024: level 1 only
    assert sorted(set(_token_counts(unet, lambda: _run(unet, inputs))["attn1"])) == [256, 512]
    tomesd.apply_patch(unet, ratio=0.5, min_tokens=256)  # both levels
    assert sorted(set(_token_counts(unet, lambda: _run(unet, inputs))["attn1"])) == [128, 512]
    small = _inputs(size=16)  # 256 tokens at level 1: too small for the default, nothing merges
    tomesd.apply_patch(unet, ratio=0.5)
    patched = _token_counts(unet, lambda: _run(unet, small))
    tomesd.remove_patch(unet)
    assert patched == _token_counts(unet, lambda: _run(unet, small))


def test_max_downsample_selects_levels_as_tomesd_013_did():
    unet = tiny.unet()
    inputs = _inputs()  # 16x16 latent: 256 tokens at level 1, 64 at level 2
    tomesd.apply_patch(unet, ratio=0.5, max_downsample=1, **ANY)
    seen = _token_counts(unet, lambda: _run(unet, inputs))
    assert sorted(set(seen["attn1"])) == [64, 128]  # 256 - int(256 * 0.5); level 2 untouched
    tomesd.apply_patch(unet, ratio=0.5, max_downsample=1, merge_crossattn=True, merge_mlp=True, **ANY)
    seen = _token_counts(unet, lambda: _run(unet, inputs))
    assert all(sorted(set(seen[name])) == [64, 128] for name in ("attn1", "attn2", "ff"))


def test_options_select_levels_and_operations():
    unet = tiny.unet()
    inputs = _inputs()
    tomesd.apply_patch(unet, ratio=0.5, max_downsample=2, merge_crossattn=True, merge_mlp=True, **ANY)
    seen = _token_counts(unet, lambda: _run(unet, inputs))
    for name in ("attn1", "attn2", "ff"):
        assert sorted(set(seen[name])) == [32, 128], name
    tomesd.apply_patch(unet, ratio=0.5, merge_attn=False, merge_mlp=True, max_downsample=1, **ANY)
    seen = _token_counts(unet, lambda: _run(unet, inputs))
    assert sorted(set(seen["attn1"])) == [64, 256] and sorted(set(seen["ff"])) == [64, 128]


@pytest.mark.parametrize("options, latent, merged", [
    ({}, 64, {512}),  # plain defaults: 64x64 latent, 1024 tokens at its first attention level (2x down)
    ({"max_downsample": 1, **ANY}, 16, {32}),  # 0.1.3's level option falls back to the finest attention level
])
def test_sdxl_merges_at_its_finest_attention_level(options, latent, merged):
    unet = tiny.unet("sdxl")
    kwargs = {"added_cond_kwargs": {"text_embeds": torch.randn(2, tiny.TEXT_DIM), "time_ids": torch.zeros(2, 6)}}
    inputs = _inputs(size=latent, text=unet.config.cross_attention_dim)
    run = lambda: unet(*inputs, **kwargs)  # noqa: E731
    with torch.no_grad():
        base = _token_counts(unet, run)
        tomesd.apply_patch(unet, ratio=0.5, **options)
        seen = _token_counts(unet, run)
    assert set(base["attn1"]) == {latent * latent // 4}  # no attention at full resolution
    assert set(seen["attn1"]) == merged


def test_kv_downsample_pools_keys_and_values_of_merged_self_attention():
    unet = tiny.unet()
    inputs = _inputs(size=18)  # 18x18 tokens at level 1: pooled 2x2 -> 9x9 keys/values
    keys: list[int] = []
    attn1 = [m.attn1 for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
    tomesd.apply_patch(unet, ratio=0.5, kv_downsample=2, max_downsample=1, **ANY)
    handles = [a.register_forward_pre_hook(lambda m, a, kw: keys.append(kw["encoder_hidden_states"].shape[1] if kw.get("encoder_hidden_states") is not None else -1), with_kwargs=True) for a in attn1]
    out = _run(unet, inputs)
    for handle in handles:
        handle.remove()
    assert sorted(set(keys)) == [-1, 81]  # pooled at level 1, plain self-attention at level 2
    assert torch.isfinite(out).all()
    tomesd.apply_patch(unet, ratio=0.5, kv_downsample=1, **ANY)
    assert not torch.equal(_run(unet, inputs), out)


def test_local_matching_merges_as_many_tokens_and_stays_close_to_global():
    unet = tiny.unet()
    inputs = _inputs()
    base = _run(unet, inputs)
    tomesd.apply_patch(unet, ratio=0.5, matching="local", **ANY)
    seen = _token_counts(unet, lambda: _run(unet, inputs), ("attn1",))
    local = _run(unet, inputs)
    tomesd.apply_patch(unet, ratio=0.5, matching="global", **ANY)
    global_ = _run(unet, inputs)
    assert 128 in seen["attn1"]
    # random weights: both approximations deviate from the unmerged output by a comparable amount
    dev_local, dev_global = (local - base).abs().mean(), (global_ - base).abs().mean()
    assert 0 < dev_local < 3 * dev_global


@pytest.mark.parametrize("size,sx,sy", [(18, 2, 2), (16, 3, 3), (14, 2, 3)])
def test_latent_sizes_that_are_not_multiples_of_the_strides(size, sx, sy):
    unet = tiny.unet()
    inputs = _inputs(size=size)
    base = _run(unet, inputs)
    tomesd.apply_patch(unet, ratio=0.4, sx=sx, sy=sy, **ANY)
    seen = _token_counts(unet, lambda: _run(unet, inputs), ("attn1",))
    out = _run(unet, inputs)
    tokens = size * size
    assert tokens - int(tokens * 0.4) in seen["attn1"]
    assert out.shape == base.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("batch", [1, 3])
def test_odd_batch_sizes(batch):
    unet = tiny.unet()
    inputs = _inputs(batch=batch)
    base = _run(unet, inputs)
    tomesd.apply_patch(unet, ratio=0.5, **ANY)
    out = _run(unet, inputs)
    assert out.shape == base.shape
    # each sample is merged on its own: a sample's output does not depend on its batch neighbours
    alone = _run(unet, tuple(t[:1] if t.dim() else t for t in inputs))
    torch.testing.assert_close(out[:1], alone, rtol=1e-4, atol=1e-5)  # batched vs single matmuls


def test_user_processors_are_kept_and_a_processor_set_later_is_still_merged():
    unet = tiny.unet()
    unet.set_attn_processor(AttnProcessor())
    processors = dict(unet.attn_processors)
    inputs = _inputs()
    tomesd.apply_patch(unet, ratio=0.5, **ANY)
    assert all(unet.attn_processors[k] is p for k, p in processors.items())
    classic = _run(unet, inputs)
    unet.set_attn_processor(AttnProcessor2_0())  # e.g. a loader rebuilding processors
    seen = _token_counts(unet, lambda: _run(unet, inputs), ("attn1",))
    assert 128 in seen["attn1"]
    torch.testing.assert_close(_run(unet, inputs), classic, rtol=1e-4, atol=1e-5)  # SDPA vs classic maths
    unet.set_attn_processor(processors)
    tomesd.remove_patch(unet)
    assert all(unet.attn_processors[k] is p for k, p in processors.items())


def test_forward_and_backward_with_the_patch_on():
    unet = tiny.unet().train()
    tomesd.apply_patch(unet, ratio=0.5, merge_mlp=True, **ANY)
    x, t, text = _inputs()
    loss = unet(x, t, text).sample.square().mean()
    loss.backward()
    grads = [p.grad for p in unet.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


# --- bad input ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options,error,message",
    [
        ({"ratio": 1.0}, ValueError, r"ratio must be in \[0, 1\).*1\.0"),
        ({"ratio": -0.1}, ValueError, r"ratio must be in \[0, 1\)"),
        ({"ratio": "0.5"}, TypeError, "ratio must be a number"),
        ({"ratio": True}, TypeError, "ratio must be a number"),
        ({"sx": 0}, ValueError, "sx must be a positive integer; got 0"),
        ({"sy": -2}, ValueError, "sy must be a positive integer"),
        ({"sx": 2.0}, TypeError, "sx must be an integer"),
        ({"max_downsample": 3}, ValueError, "power of two"),
        ({"merge_mlp": "yes"}, TypeError, "merge_mlp must be True or False"),
        ({"ratios": 0.5}, TypeError, "unknown option.*'ratios'.*accepted: ratio, max_downsample"),
        ({"kv_downsample": 0}, ValueError, "kv_downsample must be a positive integer"),
        ({"matching": "fast"}, ValueError, "matching must be one of 'global', 'local'; got 'fast'"),
    ],
)
def test_bad_options_raise_clear_errors_and_leave_the_model_unpatched(options, error, message):
    unet = tiny.unet()
    before = _snapshot(unet)
    with pytest.raises(error, match=message):
        tomesd.apply_patch(unet, **options)
    assert not tomesd.is_patched(unet)
    _assert_same_as(unet, before)


def test_a_failed_reapply_leaves_the_previous_patch_in_place():
    unet = tiny.unet()
    tomesd.apply_patch(unet, ratio=0.3, **ANY)
    with pytest.raises(ValueError):
        tomesd.apply_patch(unet, ratio=2)
    assert tomesd.is_patched(unet)


def test_objects_with_nothing_to_patch():
    with pytest.raises(ValueError, match="AutoencoderKL has no BasicTransformerBlock"):
        tomesd.apply_patch(tiny.vae())
    with pytest.raises(TypeError, match="cannot patch a builtins.str"):
        tomesd.apply_patch("runwayml/stable-diffusion-v1-5")
    with pytest.raises(TypeError, match="cannot patch a torch.nn.modules.linear.Linear"):
        tomesd.apply_patch(torch.nn.Linear(2, 2))


# --- pipelines end to end -------------------------------------------------------------------------------


def _pipeline_call(name, pipe, seed=0):
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    kwargs = dict(prompt="a red circle", num_inference_steps=STEPS, output_type="np", guidance_scale=7.5)
    extra = {
        "img2img": dict(image=image, strength=1.0),
        "inpaint": dict(image=image, mask_image=Image.new("L", (64, 64), 255), height=64, width=64),
        "controlnet": dict(image=image, height=64, width=64),
    }.get(name, dict(height=64, width=64))
    return pipe(**kwargs, **extra, generator=torch.Generator().manual_seed(seed)).images


@pytest.mark.parametrize("name", list(tiny.PIPELINES))
def test_pipelines_run_end_to_end_patched_and_restore_exactly(name, tmp_path):
    pipe = tiny.PIPELINES[name](tmp_path)
    pipe.set_progress_bar_config(disable=True)
    base = _pipeline_call(name, pipe)
    tomesd.apply_patch(pipe, ratio=0.5, **ANY)
    models = [pipe.unet] + ([pipe.controlnet] if name == "controlnet" else [])
    for model in models:  # every transformer-bearing model of the pipeline merges
        seen = _token_counts(model, lambda: _pipeline_call(name, pipe), ("attn1",))
        full = 32 * 32 if name != "sdxl" else 16 * 16  # finest attention level of the 32x32 latent
        assert full - int(full * 0.5) in seen["attn1"], type(model).__name__
        assert full not in seen["attn1"]
    patched = _pipeline_call(name, pipe)
    assert patched.shape == base.shape
    assert not (patched == base).all()
    # random weights, two steps: merging moves pixels a little (values in [0, 1])
    assert abs(patched - base).mean() < 0.05
    tomesd.remove_patch(pipe)
    assert (_pipeline_call(name, pipe) == base).all()


def test_pipeline_ratio_zero_is_bit_identical(tmp_path):
    pipe = tiny.PIPELINES["sd1"](tmp_path)
    pipe.set_progress_bar_config(disable=True)
    base = _pipeline_call("sd1", pipe)
    tomesd.apply_patch(pipe, ratio=0)
    assert (_pipeline_call("sd1", pipe) == base).all()


@pytest.mark.parametrize("matching", ["local", "global"])
def test_merging_runs_on_the_meta_device_so_it_copies_nothing_to_the_host(matching):
    # meta tensors have shapes but no values: any .item(), bincount or nonzero on them raises. Merging must
    # not need one (a GPU would wait for it in every block). Only the timestep, a CPU tensor here, is read.
    with torch.device("meta"):
        unet = tiny.unet()
    sample, timestep, text = _inputs(size=32)
    tomesd.apply_patch(unet, ratio=0.5, matching=matching, **ANY)
    seen = _token_counts(unet, lambda: _run(unet, (sample.to("meta"), timestep, text.to("meta"))), ("attn1", "ff"))
    assert sorted(set(seen["attn1"])) == sorted(set(seen["ff"])) == [128, 512]
