"""Tiny, seeded diffusers models and pipelines built offline from configs, for tests.

Shapes follow the real architectures at toy width: attention at the first level like SD 1.x/2.x,
no attention at the first level like SDXL.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    StableDiffusionControlNetPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

TEXT_DIM = 32


def unet(kind: str = "sd1", in_channels: int = 4, seed: int = 0) -> UNet2DConditionModel:
    """A toy U-Net: ``sd1`` (attention at levels 1 and 2), ``sd2`` (linear projections, per-level head
    dims), or ``sdxl`` (no attention at level 1, two transformer layers at level 2, text-time embeddings)."""
    torch.manual_seed(seed)
    common = dict(sample_size=16, in_channels=in_channels, out_channels=4, layers_per_block=1, norm_num_groups=8)
    if kind == "sdxl":
        return UNet2DConditionModel(
            **common,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=2 * TEXT_DIM,
            attention_head_dim=(4, 8),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM,
        ).eval()
    return UNet2DConditionModel(
        **common,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=(4, 8) if kind == "sd2" else 8,
        use_linear_projection=kind == "sd2",
    ).eval()


def mini_unet(kind: str = "sd1", seed: int = 0) -> UNet2DConditionModel:
    """The smallest U-Nets with each layout, for tests that pay per traced block (``torch.compile``):
    ``sd1`` has attention at level 1 only (one down, two up transformer blocks), ``sdxl`` at level 2 only
    with SDXL's linear projections and text-time embeddings. Their mid blocks have no attention."""
    torch.manual_seed(seed)
    common = dict(sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
                  block_out_channels=(32, 32), mid_block_type="UNetMidBlock2D", attention_head_dim=8)
    if kind == "sdxl":
        return UNet2DConditionModel(
            **common, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2 * TEXT_DIM,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + TEXT_DIM,
        ).eval()
    return UNet2DConditionModel(
        **common, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=TEXT_DIM,
    ).eval()


def controlnet(unet_model: UNet2DConditionModel, seed: int = 1) -> ControlNetModel:
    torch.manual_seed(seed)
    return ControlNetModel.from_unet(unet_model, conditioning_embedding_out_channels=(8, 16)).eval()


def vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    ).eval()


def text_encoder(projection: bool = False, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=600, hidden_size=TEXT_DIM, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, projection_dim=TEXT_DIM, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    model_class = CLIPTextModelWithProjection if projection else CLIPTextModel
    return model_class(config).eval()


def tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP BPE tokenizer over single bytes (no merges), written to ``folder`` and loaded from it."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = [chr(c) for c in range(33, 127)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1)


def sd_pipeline(folder: Path, kind: str = "sd1", pipeline_class: type = StableDiffusionPipeline, in_channels: int = 4):
    """A toy SD 1.x/2.x pipeline of ``pipeline_class`` (txt2img, img2img, inpaint)."""
    return pipeline_class(
        vae=vae(), text_encoder=text_encoder(), tokenizer=tokenizer(folder), unet=unet(kind, in_channels),
        scheduler=scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sdxl_pipeline(folder: Path) -> StableDiffusionXLPipeline:
    return StableDiffusionXLPipeline(
        vae=vae(), text_encoder=text_encoder(), text_encoder_2=text_encoder(projection=True, seed=1),
        tokenizer=tokenizer(folder), tokenizer_2=tokenizer(folder / "2"), unet=unet("sdxl"), scheduler=scheduler(),
    )


def controlnet_pipeline(folder: Path) -> StableDiffusionControlNetPipeline:
    base = unet("sd1")
    return StableDiffusionControlNetPipeline(
        vae=vae(), text_encoder=text_encoder(), tokenizer=tokenizer(folder), unet=base, controlnet=controlnet(base),
        scheduler=scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


PIPELINES = {
    "sd1": lambda folder: sd_pipeline(folder, "sd1"),
    "sd2": lambda folder: sd_pipeline(folder, "sd2"),
    "img2img": lambda folder: sd_pipeline(folder, "sd1", StableDiffusionImg2ImgPipeline),
    "inpaint": lambda folder: sd_pipeline(folder, "sd1", StableDiffusionInpaintPipeline, in_channels=9),
    "sdxl": sdxl_pipeline,
    "controlnet": controlnet_pipeline,
}


# --- video U-Nets ---------------------------------------------------------------------------------------

FRAMES = 3


def motion_adapter(seed: int = 2):
    """A toy AnimateDiff motion adapter matching :func:`unet` ``sd1``'s widths."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    return MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2,
                         motion_norm_num_groups=8, motion_max_seq_length=8).eval()


def video_unet(kind: str, seed: int = 0) -> torch.nn.Module:
    """A toy video U-Net: ``motion`` (AnimateDiff: :func:`unet` with a motion adapter), ``svd``
    (``UNetSpatioTemporalConditionModel``), ``unet3d`` (``UNet3DConditionModel``) or ``i2vgen``
    (``I2VGenXLUNet``). Spatial attention at both levels, temporal blocks beside it."""
    import diffusers

    if kind == "motion":
        return diffusers.UNetMotionModel.from_unet2d(unet("sd1", seed=seed), motion_adapter()).eval()
    torch.manual_seed(seed)
    common = dict(block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=TEXT_DIM)
    if kind == "svd":
        return diffusers.UNetSpatioTemporalConditionModel(
            **common, in_channels=8, out_channels=4, num_attention_heads=(2, 4), addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=3 * 8, num_frames=FRAMES,
            down_block_types=("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal"),
            up_block_types=("CrossAttnUpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        ).eval()
    model_class = {"unet3d": diffusers.UNet3DConditionModel, "i2vgen": diffusers.I2VGenXLUNet}[kind]
    extra = {"num_attention_heads": None} if kind == "i2vgen" else {}
    return model_class(
        **common, **extra, norm_num_groups=8, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock3D", "CrossAttnDownBlock3D"), up_block_types=("CrossAttnUpBlock3D", "CrossAttnUpBlock3D"),
    ).eval()


def video_inputs(kind: str, batch: int = 2, size: int = 16, frames: int = FRAMES, seed: int = 0) -> dict:
    """Forward keyword arguments of :func:`video_unet` ``kind`` for a ``batch`` of ``frames``-frame clips."""
    g = torch.Generator().manual_seed(seed)
    text = torch.randn(batch, 7, TEXT_DIM, generator=g)
    if kind == "svd":  # (B, F, C, H, W): frames before channels; image latents concatenated on channels
        return {"sample": torch.randn(batch, frames, 8, size, size, generator=g), "timestep": torch.tensor(10.0),
                "encoder_hidden_states": text[:, :1], "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]] * batch)}
    inputs = {"sample": torch.randn(batch, 4, frames, size, size, generator=g), "timestep": torch.tensor(500),
              "encoder_hidden_states": text.repeat_interleave(frames, 0) if kind == "motion" else text}
    if kind == "i2vgen":
        inputs.update(fps=torch.tensor([8] * batch), image_latents=torch.randn(batch, 4, frames, size, size, generator=g),
                      image_embeddings=torch.randn(batch, TEXT_DIM, generator=g))
    return inputs


def animatediff_pipeline(folder: Path):
    """A toy AnimateDiff pipeline (the SD 1.x toy parts plus :func:`motion_adapter`)."""
    from diffusers import AnimateDiffPipeline

    return AnimateDiffPipeline(vae=vae(), text_encoder=text_encoder(), tokenizer=tokenizer(folder), unet=unet("sd1"),
                               motion_adapter=motion_adapter(), scheduler=scheduler())


def svd_pipeline(folder: Path):
    """A toy Stable Video Diffusion pipeline: :func:`video_unet` ``svd``, a temporal-decoder VAE and a CLIP
    image encoder at the 224 px the pipeline resizes to (32 px patches: 49 tokens)."""
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    temporal_vae = AutoencoderKLTemporalDecoder(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D",) * 2,
                                                latent_channels=4, layers_per_block=1).eval()
    encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, projection_dim=TEXT_DIM, num_hidden_layers=2, num_attention_heads=4, image_size=224,
        intermediate_size=37, patch_size=32)).eval()
    euler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0,
        timestep_spacing="leading", timestep_type="continuous", steps_offset=1)
    return StableVideoDiffusionPipeline(vae=temporal_vae, image_encoder=encoder, unet=video_unet("svd"), scheduler=euler,
                                        feature_extractor=CLIPImageProcessor(crop_size=224, size=224))
