"""The diffusers zoo (tests/diffusers_zoo.py) itself: every exported model class is sorted, every builder
builds a seeded model with attention whose unpatched forward runs, and every tiny pipeline runs 2 steps.

These tests do not patch anything: they keep the zoo honest so that the patcher's own parametrized tests
(patched-and-working or refused at apply time, issue 14) can rely on it.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

import diffusers_zoo as zoo

ALL_CLASSES = zoo.model_mixin_classes()


def test_every_attention_class_is_listed():
    """Each ModelMixin class diffusers exports is in exactly one of: built (ZOO), NOT_BUILT, OUT_OF_SCOPE —
    so a diffusers release that adds a class fails here until someone sorts it (with a reason)."""
    built = {zoo.class_name(key) for key in zoo.ZOO}
    listed = [built, set(zoo.NOT_BUILT), set(zoo.OUT_OF_SCOPE)]
    missing = set(ALL_CLASSES) - set().union(*listed)
    assert not missing, f"diffusers classes nobody sorted (add a builder or a reason): {sorted(missing)}"
    twice = (listed[0] & listed[1]) | (listed[0] & listed[2]) | (listed[1] & listed[2])
    assert not twice, f"classes in more than one list: {sorted(twice)}"
    unknown = set().union(*listed) - set(ALL_CLASSES)
    assert not unknown, f"listed names diffusers does not export (renamed or removed?): {sorted(unknown)}"


def test_reasons_are_given():
    for name, reason in {**zoo.NOT_BUILT, **zoo.OUT_OF_SCOPE}.items():
        assert isinstance(reason, str) and len(reason) > 20, name


def test_issue_14_models_are_built():
    """The models the product must serve (issue 14) have builders, not reasons."""
    must = {
        "UNet2DConditionModel", "ControlNetModel", "UNetMotionModel", "UNetSpatioTemporalConditionModel",
        "UNet3DConditionModel", "I2VGenXLUNet", "PixArtTransformer2DModel", "DiTTransformer2DModel",
        "SD3Transformer2DModel", "FluxTransformer2DModel", "SanaTransformer2DModel", "WanTransformer3DModel",
    }
    assert must <= set(zoo.ZOO)


def _sample(output):
    """The main tensor of a diffusers model output (dataclass, tuple or tensor)."""
    while not isinstance(output, torch.Tensor):
        if isinstance(output, (tuple, list)):
            output = output[0]
        elif hasattr(output, "to_tuple"):
            output = output.to_tuple()[0]
        else:
            raise TypeError(f"no tensor in {type(output).__name__}")
    return output


def _forward(key: str) -> torch.Tensor:
    model, kwargs = zoo.build(key)
    with torch.no_grad():
        return _sample(model(**kwargs))


@pytest.mark.parametrize("key", sorted(zoo.ZOO))
def test_builder_forward_runs_and_is_seeded(key):
    """The builder gives the named class, with attention modules, in eval mode; its unpatched forward runs
    and gives finite numbers; a second build gives the same output exactly (fixed seeds, no hidden state)."""
    model, kwargs = zoo.build(key)
    assert type(model) is ALL_CLASSES[zoo.class_name(key)]
    assert not model.training
    assert zoo.attention_modules(model), f"{key}: no attention module"
    with torch.no_grad():
        first = _sample(model(**kwargs))
    assert torch.isfinite(first).all()
    assert torch.equal(first, _forward(key))


@pytest.mark.parametrize("key", sorted(zoo.NOT_BUILT) + sorted(zoo.OUT_OF_SCOPE))
def test_unbuilt_classes_skip_with_their_reason(key):
    """The parametrized shape a patcher test uses: a class without a builder is skipped, and says why."""
    pytest.skip({**zoo.NOT_BUILT, **zoo.OUT_OF_SCOPE}[key])


def test_builder_keys_name_real_classes():
    for key in zoo.ZOO:
        assert zoo.class_name(key) in ALL_CLASSES, key
        assert key.count(":") <= 1, key


# How often each pipeline calls its denoiser in 2 steps (Wan runs the unconditional pass separately).
DENOISER_CALLS = {
    "FluxPipeline": 2, "StableDiffusion3Pipeline": 2, "PixArtSigmaPipeline": 2, "SanaPipeline": 2,
    "AnimateDiffPipeline": 2, "StableVideoDiffusionPipeline": 2, "WanPipeline": 4,
}


def test_every_pipeline_has_a_call_count():
    assert set(DENOISER_CALLS) == set(zoo.PIPELINES)


@pytest.mark.parametrize("name", sorted(zoo.PIPELINES))
def test_pipeline_runs_two_steps_offline(name, tmp_path: Path):
    """Built offline (tiny text encoders and tokenizers too), the pipeline runs 2 steps end to end and
    returns an image (or frames) of the asked size."""
    pipe, call = zoo.PIPELINES[name](tmp_path)
    assert type(pipe).__name__ == name
    pipe.set_progress_bar_config(disable=True)
    denoiser = getattr(pipe, "transformer", None) or pipe.unet
    calls = []
    handle = denoiser.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        output = pipe(**call, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    assert len(calls) == DENOISER_CALLS[name]
    if "num_frames" in call:
        frames = output.frames
        assert frames.shape == (1, call["num_frames"], call["height"], call["width"], 3)
        assert (frames >= 0).all() and (frames <= 1).all()
    else:
        (image,) = output.images
        assert image.size == (call["width"], call["height"])


def test_tokenizers_are_built_in_memory():
    """The T5 and Gemma tokenizers need no file and no download, and pad to the asked length."""
    for tokenizer in (zoo.t5_tokenizer(), zoo.gemma_tokenizer()):
        ids = tokenizer(["a red circle", "b"], padding="max_length", max_length=12, truncation=True, return_tensors="pt").input_ids
        assert ids.shape == (2, 12)
        assert (ids[1] == tokenizer.pad_token_id).sum() > 0
        assert len(set(ids[0].tolist())) > 3  # characters map to distinct ids


def test_zoo_source_has_no_hub_access():
    """Offline by construction: no from_pretrained / hub download in the zoo."""
    source = inspect.getsource(zoo)
    assert "from_pretrained(" not in source and "hf_hub_download" not in source
