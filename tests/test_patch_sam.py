"""Token merging in Segment Anything image encoders (segment-anything and transformers' SamModel).

Tiny random-weight SAMs built offline: 256 px -> a 16×16 token grid, 4 blocks of which 1 and 3 attend
globally, windows of 4; relative-position tables and absolute position embeddings randomised so the
position terms matter (SAM initialises them to zero).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
segment_anything = pytest.importorskip("segment_anything")
from segment_anything import SamAutomaticMaskGenerator, SamPredictor  # noqa: E402
from segment_anything.modeling import (  # noqa: E402
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from transformers import (  # noqa: E402
    SamConfig,
    SamMaskDecoderConfig,
    SamModel,
    SamPromptEncoderConfig,
    SamVisionConfig,
)

import tomesd  # noqa: E402
from tomesd.patch import sam as tome_sam  # noqa: E402
from tomesd.patch import timm as tome_timm  # noqa: E402

GRID = 16  # tokens per side at 256 px


def randomise_positions(encoder: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                parameter.normal_(std=0.5)


def build_segment_anything(global_blocks=(1, 3), window_size=4) -> Sam:
    torch.manual_seed(0)
    encoder = ImageEncoderViT(img_size=256, embed_dim=64, depth=4, num_heads=2, out_chans=32, use_rel_pos=True,
                              window_size=window_size, global_attn_indexes=global_blocks)
    prompt = PromptEncoder(embed_dim=32, image_embedding_size=(GRID, GRID), input_image_size=(256, 256),
                           mask_in_chans=4)
    decoder = MaskDecoder(transformer_dim=32, iou_head_hidden_dim=32,
                          transformer=TwoWayTransformer(depth=2, embedding_dim=32, mlp_dim=64, num_heads=2))
    sam = Sam(encoder, prompt, decoder).eval()
    randomise_positions(sam.image_encoder)
    return sam


def build_transformers(attn_implementation: str) -> SamModel:
    torch.manual_seed(0)
    config = SamConfig(
        vision_config=SamVisionConfig(hidden_size=64, output_channels=32, num_hidden_layers=4, num_attention_heads=2,
                                      image_size=256, window_size=4, global_attn_indexes=[1, 3], num_pos_feats=16,
                                      initializer_range=0.02),
        prompt_encoder_config=SamPromptEncoderConfig(hidden_size=32, image_size=256, mask_input_channels=4),
        mask_decoder_config=SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                 mlp_dim=64, iou_head_hidden_dim=32),
    )
    model = SamModel._from_config(config, attn_implementation=attn_implementation).eval()
    randomise_positions(model.vision_encoder)
    return model


@pytest.fixture
def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))


def drawn_image() -> np.ndarray:
    """A small RGB picture: two flat shapes on a gradient, so merging has structure to follow."""
    yy, xx = np.mgrid[0:96, 0:128]
    image = np.stack([xx * 2, yy * 2, np.full_like(xx, 60)], axis=-1).astype(np.uint8)
    image[20:60, 20:60] = (220, 40, 40)
    image[(yy - 60) ** 2 + (xx - 90) ** 2 < 400] = (30, 200, 90)
    return image


def encoders():
    sam = build_segment_anything()
    yield "segment_anything", sam, lambda x: sam.image_encoder(x)
    for implementation in ("eager", "sdpa"):
        model = build_transformers(implementation)
        yield f"transformers_{implementation}", model, lambda x, m=model: m.get_image_embeddings(x)


ENCODERS = ["segment_anything", "transformers_eager", "transformers_sdpa"]


def encoder_by_name(name: str):
    return next((model, run) for label, model, run in encoders() if label == name)


def state_of(model: torch.nn.Module) -> list:
    return [(name, sorted(vars(module))) for name, module in model.named_modules()]


@pytest.mark.parametrize("name", ENCODERS)
def test_stride_one_and_removal_are_bit_identical(name, pixels):
    model, run = encoder_by_name(name)
    before = state_of(model)
    with torch.no_grad():
        reference = run(pixels)
        tomesd.apply_patch(model, sx=1, sy=1, blocks="all", merge_mlp=True)
        unmerged = run(pixels)
        tomesd.apply_patch(model)
        merged = run(pixels)
        tomesd.remove_patch(model)
        restored = run(pixels)
    assert torch.equal(unmerged, reference)
    assert torch.equal(restored, reference)
    assert merged.shape == reference.shape and not torch.equal(merged, reference)
    assert state_of(model) == before


@pytest.mark.parametrize("name", ENCODERS)
def test_global_attention_runs_on_the_merged_grid(name, pixels):
    model, run = encoder_by_name(name)
    encoder = model.image_encoder if name == "segment_anything" else model.vision_encoder
    layers = encoder.blocks if name == "segment_anything" else encoder.layers
    seen = {}
    for index, block in enumerate(layers):
        block.attn.qkv.register_forward_hook(lambda m, args, out, i=index: seen.__setitem__(i, tuple(args[0].shape)))
    tomesd.apply_patch(model, sx=2, sy=2)
    with torch.no_grad():
        run(pixels)
    # global blocks 1 and 3: (16/2)×(16/2); windowed blocks: 16 windows of 4×4 per image, untouched
    assert seen == {0: (32, 4, 4, 64), 1: (2, 8, 8, 64), 2: (32, 4, 4, 64), 3: (2, 8, 8, 64)}
    tomesd.apply_patch(model, sx=2, sy=1, blocks="all")
    with torch.no_grad():
        run(pixels)
    assert seen == {0: (32, 4, 2, 64), 1: (2, 16, 8, 64), 2: (32, 4, 2, 64), 3: (2, 16, 8, 64)}


def test_merged_encoder_stays_close_and_merge_mlp_goes_further(pixels):
    # merging approximates: with 2×2 strides in the 2 global blocks, the embedding keeps a cosine > 0.95
    # to the unmerged one on this random-weight model; merging the MLPs too moves it further
    sam = build_segment_anything()
    with torch.no_grad():
        reference = sam.image_encoder(pixels).flatten(1)
        tomesd.apply_patch(sam)
        attention_only = sam.image_encoder(pixels).flatten(1)
        tomesd.apply_patch(sam, merge_mlp=True)
        with_mlp = sam.image_encoder(pixels).flatten(1)
    close = F.cosine_similarity(reference, attention_only)
    assert close.min() > 0.95
    assert (F.cosine_similarity(reference, with_mlp) < close).all()


def test_predictor_and_automatic_mask_generator_run_end_to_end():
    sam = build_segment_anything()
    image = drawn_image()
    predictor = SamPredictor(tomesd.apply_patch(sam))
    predictor.set_image(image)
    assert predictor.features.shape == (1, 32, GRID, GRID)
    masks, scores, logits = predictor.predict(point_coords=np.array([[40, 40]]), point_labels=np.array([1]))
    assert masks.shape == (3, 96, 128) and masks.dtype == bool and np.isfinite(scores).all()
    generator = SamAutomaticMaskGenerator(sam, points_per_side=4, pred_iou_thresh=-10.0,
                                          stability_score_thresh=0.0, box_nms_thresh=1.0)
    records = generator.generate(image)
    assert records and all(record["segmentation"].shape == (96, 128) for record in records)


def test_transformers_sam_model_predicts_masks_with_the_patch():
    model = build_transformers("sdpa")
    points = torch.tensor([[[[100.0, 120.0]]]])
    pixels = torch.randn(1, 3, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        reference = model(pixel_values=pixels, input_points=points).pred_masks
        merged = tomesd.apply_patch(model)(pixel_values=pixels, input_points=points).pred_masks
    assert merged.shape == reference.shape and torch.isfinite(merged).all()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"sx": 0}, ValueError, "sx must be >= 1"),
        ({"sy": 1.5}, TypeError, "sy must be an int"),
        ({"blocks": "windows"}, ValueError, "blocks must be one of"),
        ({"ratio": 0.5}, TypeError, "accepted: sx, sy, blocks, merge_mlp"),
    ],
)
def test_bad_options_raise_and_leave_the_model_unpatched(options, error, message):
    sam = build_segment_anything()
    with pytest.raises(error, match=message):
        tomesd.apply_patch(sam, **options)
    assert not tomesd.is_patched(sam) and state_of(sam) == state_of(build_segment_anything())


def test_encoder_without_global_blocks_needs_blocks_all(pixels):
    # windows of 5 on a 16×16 grid: padded windows, and 5×5 windows leave a row and a column outside the
    # 2×2 cells (they are merged like any other candidate)
    sam = build_segment_anything(global_blocks=(), window_size=5)
    with torch.no_grad():
        reference = sam.image_encoder(pixels)
        with pytest.raises(ValueError, match="no global-attention block"):
            tomesd.apply_patch(sam)
        tomesd.apply_patch(sam.image_encoder, blocks="all")
        merged = sam.image_encoder(pixels)
    assert merged.shape == reference.shape == (2, 32, GRID, GRID)
    assert torch.isfinite(merged).all() and not torch.equal(merged, reference)


def test_families_do_not_claim_each_other():
    timm = pytest.importorskip("timm")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=32)
    sam = build_segment_anything()
    assert tome_sam.supports(sam) and tome_sam.supports(sam.image_encoder)
    assert tome_sam.supports(build_transformers("eager"))
    assert not tome_sam.supports(vit) and not tome_timm.supports(sam) and not tome_timm.supports(sam.image_encoder)
    assert not tome_sam.supports(sam.mask_decoder)
