"""One model, one patch: patches applied through a pipeline or its models, removal from either side, and
copies (``copy.deepcopy``, ``pickle``, ``torch.save``) of patched diffusers, timm and SAM models.

Exact (torch.equal) throughout: a copy runs the same merge as its original, removal restores the
unpatched output bit for bit.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import tiny
import tomesd
from test_patch_sam import build_segment_anything, build_transformers
from test_patch_timm import build as build_timm

ANY = {"min_tokens": 0}  # the tiny U-Nets are below the default min_tokens


def hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def attributes(obj) -> list:
    """Every instance attribute name and hook count of ``obj`` and its submodules: what removal restores."""
    modules = obj.named_modules() if isinstance(obj, torch.nn.Module) else [("", obj)]
    return [(name, sorted(vars(m)), len(getattr(m, "_forward_hooks", ())), len(getattr(m, "_forward_pre_hooks", ())))
            for name, m in modules]


def unet_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 16, 16, generator=g), torch.tensor(500), torch.randn(2, 7, tiny.TEXT_DIM, generator=g)


def run_unet(unet, inputs=None):
    with torch.no_grad():
        return unet(*(inputs or unet_inputs())).sample


@pytest.fixture
def pipe(tmp_path):
    return tiny.sd_pipeline(tmp_path)


def test_patching_the_pipeline_after_its_unet_leaves_one_patch_with_the_new_options(pipe):
    single = tomesd.apply_patch(tiny.unet(), ratio=0.3, **ANY)  # the same weights, patched once at 0.3
    tomesd.apply_patch(pipe.unet, ratio=0.6, **ANY)
    tomesd.apply_patch(pipe, ratio=0.3, **ANY)
    assert hooks(pipe.unet) == hooks(single)  # stacked patches had twice the hooks
    assert torch.equal(run_unet(pipe.unet), run_unet(single))  # and ran the 0.6 merge
    assert pipe.unet._tomesd.options["ratio"] == 0.3 and pipe.unet._tomesd.owner is pipe


def test_patching_the_unet_after_its_pipeline_leaves_one_patch_with_the_new_options(pipe):
    single = tomesd.apply_patch(tiny.unet(), ratio=0.6, **ANY)
    tomesd.apply_patch(pipe, ratio=0.3, **ANY)
    tomesd.apply_patch(pipe.unet, ratio=0.6, **ANY)
    assert not tomesd.is_patched(pipe)  # the pipeline's patch made way for the U-Net's own
    assert hooks(pipe.unet) == hooks(single) and torch.equal(run_unet(pipe.unet), run_unet(single))


@pytest.mark.parametrize("through", ["pipeline", "unet"])
def test_a_pipeline_patch_is_removed_through_the_pipeline_or_its_unet_exactly(pipe, through):
    reference, before = run_unet(pipe.unet), (attributes(pipe), attributes(pipe.unet))
    tomesd.apply_patch(pipe, **ANY)
    assert tomesd.is_patched(pipe) and tomesd.is_patched(pipe.unet)
    assert not tomesd.is_patched(pipe.vae)  # untouched components are not marked
    tomesd.remove_patch(pipe if through == "pipeline" else pipe.unet)  # through the U-Net it was a no-op
    assert not tomesd.is_patched(pipe) and not tomesd.is_patched(pipe.unet)
    assert (attributes(pipe), attributes(pipe.unet)) == before
    assert torch.equal(run_unet(pipe.unet), reference)


def test_removing_through_the_controlnet_removes_the_pipelines_whole_patch(tmp_path):
    pipe = tiny.controlnet_pipeline(tmp_path)
    before = attributes(pipe.unet), attributes(pipe.controlnet)
    tomesd.apply_patch(pipe, **ANY)
    assert tomesd.is_patched(pipe.controlnet) and hooks(pipe.controlnet) > 0
    tomesd.remove_patch(pipe.controlnet)
    assert (attributes(pipe.unet), attributes(pipe.controlnet)) == before


def test_a_refused_pipeline_patch_puts_the_unets_own_patch_back(pipe):
    tomesd.apply_patch(pipe.unet, ratio=0.6, **ANY)
    patched = run_unet(pipe.unet)
    with pytest.raises(ValueError, match="ratio"):
        tomesd.apply_patch(pipe, ratio=2.0)
    assert pipe.unet._tomesd.owner is pipe.unet and pipe.unet._tomesd.options["ratio"] == 0.6
    assert torch.equal(run_unet(pipe.unet), patched)


# --- copies -------------------------------------------------------------------------------------------------


def _diffusers_unet():
    return tiny.unet(), lambda m: run_unet(m), ANY


def _timm():
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    return build_timm("vit"), lambda m: m(x), {"r": 3}


def _segment_anything():
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    return build_segment_anything(), lambda m: m.image_encoder(x), {}


def _transformers_sam():
    x = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    return build_transformers("sdpa"), lambda m: m.get_image_embeddings(x), {}


MODELS = {"diffusers": _diffusers_unet, "timm": _timm, "segment_anything": _segment_anything,
          "transformers_sam": _transformers_sam}


def _pickled(model):
    return pickle.loads(pickle.dumps(model))


def _torch_saved(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("copier", [copy.deepcopy, _pickled, _torch_saved], ids=["deepcopy", "pickle", "torch_save"])
@pytest.mark.parametrize("family", MODELS)
def test_a_copy_of_a_patched_model_is_patched_independently(family, copier):
    """The copy merges as the original does, with its own state: removing its patch restores the unpatched
    output and leaves the original patched (a deep copy used to share the original's hooks and state)."""
    model, run, options = MODELS[family]()
    with torch.no_grad():
        reference = run(model)
        tomesd.apply_patch(model, **options)
        merged = run(model)
        before = attributes(model)
        clone = copier(model)
        assert attributes(model) == before  # copying left the original as it was
        assert tomesd.is_patched(clone) and clone._tomesd is not model._tomesd and clone._tomesd.owner is clone
        assert clone._tomesd.options == model._tomesd.options
        assert torch.equal(run(clone), merged)
        tomesd.remove_patch(clone)
        assert torch.equal(run(clone), reference)
        assert tomesd.is_patched(model) and torch.equal(run(model), merged)


@pytest.mark.parametrize("copier", [copy.deepcopy, _pickled], ids=["deepcopy", "pickle"])
def test_a_copy_of_a_pipeline_patched_unet_is_a_patched_unet_of_its_own(pipe, copier):
    reference = run_unet(pipe.unet)
    tomesd.apply_patch(pipe, **ANY)
    merged = run_unet(pipe.unet)
    clone = copier(pipe.unet)
    assert clone._tomesd.owner is clone and hooks(clone) == hooks(pipe.unet)
    assert torch.equal(run_unet(clone), merged)
    tomesd.remove_patch(clone)
    assert hooks(clone) == 0 and torch.equal(run_unet(clone), reference)
    assert tomesd.is_patched(pipe) and torch.equal(run_unet(pipe.unet), merged)


def test_a_deep_copy_of_a_patched_pipeline_is_patched_on_its_own_models(pipe):
    tomesd.apply_patch(pipe, **ANY)
    clone = copy.deepcopy(pipe)
    assert clone.unet is not pipe.unet and clone.unet._tomesd.owner is clone
    assert torch.equal(run_unet(clone.unet), run_unet(pipe.unet))
    tomesd.remove_patch(clone)
    assert hooks(clone.unet) == 0 and hooks(pipe.unet) > 0


def test_a_deep_copy_of_a_module_inside_a_patched_model_is_unpatched():
    unet = tomesd.apply_patch(tiny.unet(), **ANY)
    level, block = unet.down_blocks[0], unet.down_blocks[0].attentions[0].transformer_blocks[0]
    assert tomesd.is_patched(block)  # a module the patch hooked carries it
    for module in (level, block):
        clone = copy.deepcopy(module)
        assert hooks(module) > 0 and hooks(clone) == 0 and not tomesd.is_patched(clone)
    assert tomesd.is_patched(unet) and hooks(unet) > 0
