"""ToMe on timm Vision Transformers: exactness at r=0 and after removal, merging behaviour, schedules, errors.

Tiny random-weight models built offline from timm's own configs (depth 4, 64 px -> 16 patches).
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
timm = pytest.importorskip("timm")

import tomesd  # noqa: E402
from tomesd.patch import timm as tome_timm  # noqa: E402
from tomesd.patch.sequence import SequenceMerge  # noqa: E402

from sequence_checks import module_attributes, record_sdpa_masks  # noqa: E402

ARCHITECTURES = {
    "vit": ("vit_tiny_patch16_224", {}),
    "deit_distilled": ("deit_tiny_distilled_patch16_224", {}),
    "deit3_layerscale": ("deit3_small_patch16_224", {}),
    "registers_avgpool_mae": ("vit_tiny_patch16_224", {"reg_tokens": 4, "global_pool": "avg", "fc_norm": True}),
    "qknorm_mappool": ("vit_tiny_patch16_224", {"qk_norm": True, "global_pool": "map"}),
}


def build(arch: str, **extra) -> torch.nn.Module:
    name, kwargs = ARCHITECTURES[arch]
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, depth=4, img_size=64, **kwargs, **extra).eval()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_r0_and_removal_are_bit_identical(arch, images):
    model = build(arch)
    before = module_attributes(model)
    with torch.no_grad():
        reference = model(images)
        tomesd.apply_patch(model, r=0)
        unmerged = model(images)
        tomesd.apply_patch(model, r=3)
        merged = model(images)
        tomesd.remove_patch(model)
        restored = model(images)
    assert torch.equal(unmerged, reference)
    assert torch.equal(restored, reference)
    assert not torch.equal(merged, reference)
    assert module_attributes(model) == before
    assert not tomesd.is_patched(model)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_merging_removes_r_tokens_per_layer_and_keeps_prefix_tokens(arch, images):
    model = build(arch)
    prefix = model.num_prefix_tokens
    tomesd.apply_patch(model, r=[3, 2, 2, 1], trace_source=True)
    with torch.no_grad():
        features = model.forward_features(images)
        logits = model.forward_head(features)
    assert features.shape[1] == prefix + 16 - 8
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    source = tome_timm.merge_sources(model)  # (B, N, N0)
    assert source.shape == (2, prefix + 8, prefix + 16)
    # every input token lands in exactly one output token; prefix tokens stay alone, in place
    assert torch.equal(source.sum(dim=1), torch.ones(2, prefix + 16))
    assert torch.equal(source[:, :prefix, :prefix], torch.eye(prefix).expand(2, -1, -1))
    assert torch.equal(source[:, :prefix].sum(-1), torch.ones(2, prefix))


def test_small_r_stays_close_to_the_unmerged_model(images):
    # merging approximates: on random weights (near-uniform attention) r=1 per layer must keep the
    # logits' direction (cosine > 0.98); a wrong merge (e.g. mixing the class token) falls far below
    model = build("deit3_layerscale")
    with torch.no_grad():
        reference = model(images)
        tomesd.apply_patch(model, r=1)
        merged = model(images)
    assert F.cosine_similarity(reference, merged).min() > 0.98


def test_average_pool_is_weighted_by_token_size(images):
    model = build("registers_avgpool_mae")
    tomesd.apply_patch(model, r=3, trace_source=True)
    with torch.no_grad():
        features = model.forward_features(images)
        pooled = model.pool(features)
    size = tome_timm.merge_sources(model).sum(-1, keepdim=True)[:, model.num_prefix_tokens:]  # (B, n, 1)
    patches = features[:, model.num_prefix_tokens:]
    expected = (patches * size).sum(1) / size.sum(1)
    assert torch.allclose(pooled, expected, atol=1e-6)
    assert not torch.allclose(pooled, patches.mean(1), atol=1e-4)


def test_proportional_bias_makes_a_merged_token_attend_like_its_copies():
    # attention over [a, b, b] equals attention over [a, b] with log-size bias [0, log 2], for the
    # fused SDPA path timm uses: exact up to float rounding
    torch.manual_seed(0)
    attention = timm.layers.Attention(32, num_heads=4).eval()
    a, b = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
    info = SequenceMerge([], 0, True, False, {}, size=torch.tensor([[[1.0], [2.0]]]))
    with torch.no_grad():
        with_copies = attention(torch.cat([a, b, b], dim=1))
        merged = attention(torch.cat([a, b], dim=1), attn_mask=tome_timm._proportional_bias(info))
    assert torch.allclose(merged, with_copies[:, :2], atol=1e-6)


def test_attention_keeps_the_fused_path_with_the_size_bias(monkeypatch, images):
    model = build("vit")
    assert all(block.attn.fused_attn for block in model.blocks)
    masks = record_sdpa_masks(monkeypatch)
    tomesd.apply_patch(model, r=2)
    with torch.no_grad():
        model(images)
    assert masks[0] is None  # nothing merged before the first block
    assert [tuple(mask.shape) for mask in masks[1:]] == [(2, 1, 1, 17 - 2 * layer) for layer in (1, 2, 3)]


def test_drop_path_runs_in_timms_order_in_training(images):
    # r=0 in training mode: same stochastic-depth draws, bit-identical outputs (with gradients)
    model = build("deit3_layerscale", drop_path_rate=0.5).train()
    torch.manual_seed(5)
    reference = model(images)
    tomesd.apply_patch(model, r=0)
    torch.manual_seed(5)
    patched = model(images)
    assert torch.equal(patched, reference)
    tomesd.apply_patch(model, r=2)
    model(images).sum().backward()
    assert model.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_set_r_changes_the_schedule_after_patching(images):
    model = build("vit")
    with torch.no_grad():
        reference = model(images)
        tomesd.apply_patch(model, r=1)
        assert model.forward_features(images).shape[1] == 17 - 4
        tome_timm.set_r(model, (2, 0.5))
        assert model.forward_features(images).shape[1] == 17 - sum(tome_timm.parse_r((2, 0.5), 4))
        assert model._tomesd.options["r"] == (2, 0.5)
        tome_timm.set_r(model, 0)
        assert torch.equal(model(images), reference)


def test_parse_r_schedules():
    assert tome_timm.parse_r(3, 4) == [3, 3, 3, 3]
    assert tome_timm.parse_r([4, 3, 2, 1], 4) == [4, 3, 2, 1]
    rising = tome_timm.parse_r((8, 0.5), 12)
    assert rising[0] == 4 and rising[-1] == 12 and rising == sorted(rising)
    assert abs(sum(rising) / 12 - 8) < 0.5
    assert tome_timm.parse_r((8, -1.0), 3) == [16, 8, 0]
    assert tome_timm.parse_r((8, 0.0), 3) == [8, 8, 8]


@pytest.mark.parametrize(
    ("r", "error", "message"),
    [
        (-1, ValueError, "r must be >= 0"),
        ([1, 1], ValueError, "one value per layer: got 2 values for 4 layers"),
        ((4, 2.0), ValueError, "inflection"),
        (True, TypeError, "r must be an int"),
        (2.5, TypeError, "r must be an int"),
        ((1, 2, 3), TypeError, "tuple must be"),
        (9, ValueError, "largest constant r for this model is 3"),
    ],
)
def test_bad_r_raises_and_leaves_the_model_unpatched(r, error, message, images):
    model = build("vit")
    with torch.no_grad():
        reference = model(images)
        with pytest.raises(error, match=message.replace("(", r"\(")):
            tomesd.apply_patch(model, r=r)
        assert not tomesd.is_patched(model)
        assert torch.equal(model(images), reference)


def test_set_r_rejects_a_schedule_that_does_not_fit():
    model = tomesd.apply_patch(build("vit"), r=1)
    with pytest.raises(ValueError, match="largest constant r"):
        tome_timm.set_r(model, 5)
    assert model._tomesd.options["r"] == 1


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError, match="'ratio'.*accepted: r, proportional_attention, trace_source"):
        tomesd.apply_patch(build("vit"), ratio=0.5)


def test_unsupported_attention_and_rope_models_raise():
    torch.manual_seed(0)
    diff = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32, attn_layer="diff")
    with pytest.raises(ValueError, match="DiffAttention"):
        tomesd.apply_patch(diff, r=1)
    assert not tomesd.is_patched(diff)
    rope = timm.models.eva.Eva(img_size=32, patch_size=16, embed_dim=32, depth=1, num_heads=2, use_rot_pos_emb=True)
    with pytest.raises(ValueError, match="RoPE"):
        tomesd.apply_patch(rope, r=1)


def test_supports_only_timm_vision_transformers():
    assert tome_timm.supports(build("deit_distilled"))
    assert not tome_timm.supports(timm.create_model("resnet18", pretrained=False))
    assert not tome_timm.supports(torch.nn.Linear(2, 2))


def test_merge_sources_needs_trace_source():
    model = tomesd.apply_patch(build("vit"), r=1)
    with pytest.raises(ValueError, match="trace_source=True"):
        tome_timm.merge_sources(model)
    with pytest.raises(ValueError, match="not patched"):
        tome_timm.merge_sources(build("vit"))


def test_an_attention_mask_is_refused_while_merging(images):
    model = tomesd.apply_patch(build("vit"), r=1)
    with pytest.raises(ValueError, match="cannot take attn_mask"):
        model(images, attn_mask=torch.zeros(1, 1, 17, 17))


def test_a_smaller_input_than_the_schedule_fits_is_refused_at_run_time():
    model = tomesd.apply_patch(build("vit", dynamic_img_size=True), r=3)  # fits 64 px: 17 tokens
    small = torch.randn(1, 3, 32, 32)  # 1 + 4 tokens: 2 merge candidates
    with torch.no_grad(), pytest.raises(ValueError, match="layer 0 would merge r=3 of 5 tokens.*tomesd.patch.timm.set_r"):
        model(small)
