"""The diffusers zoo: a tiny, seeded, offline instance of every diffusers model class with attention.

``ZOO`` maps a key (a diffusers class name, or ``"ClassName:variant"`` for a second layout of the same
class) to a builder; ``ZOO[key]()`` returns ``(model, kwargs)`` with the model in eval mode on the CPU and
``model(**kwargs)`` its example forward (well under a second). ``UNBUILDABLE`` lists the classes with
attention that have no builder, each with the reason; ``OUT_OF_SCOPE`` lists the remaining top-level
``ModelMixin`` classes (no attention, or not a denoiser a token-merging patch could serve), each with the
reason. Every ``ModelMixin`` class that diffusers exports is in exactly one of the three, which
``tests/test_diffusers_zoo.py`` checks, so a diffusers release that adds a class fails that test until the
class is sorted here.

Shapes follow the real architectures at toy width (configs written for these tests, after the kind of
tiny configs diffusers' own model tests use); weights are random (``torch.manual_seed``), so outputs say
nothing about quality — these models exist to exercise patching on the real module structure.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
from torch import Tensor, nn

import tiny

Builder = Callable[[], tuple[nn.Module, dict[str, Any]]]

ZOO: dict[str, Builder] = {}


def builder(*keys: str) -> Callable[[Builder], Builder]:
    """Register the decorated function as the builder of each of ``keys``."""

    def register(fn: Builder) -> Builder:
        for key in keys:
            if key in ZOO:
                raise KeyError(f"zoo key {key!r} registered twice")
            ZOO[key] = fn
        return fn

    return register


def class_name(key: str) -> str:
    """The diffusers class a zoo key builds: ``"SD3Transformer2DModel:sd35"`` -> ``"SD3Transformer2DModel"``."""
    return key.split(":", 1)[0]


def build(key: str) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``ZOO[key]``: (model in eval mode, example forward kwargs)."""
    model, kwargs = ZOO[key]()
    return model.eval(), kwargs


def _seeded(seed: int = 0) -> None:
    torch.manual_seed(seed)


def _randn(*shape: int, seed: int = 100) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _t(value: float = 500.0, batch: int = 1) -> Tensor:
    return torch.full((batch,), value)


TEXT_LEN = 8  # text tokens in every example


# --- U-Nets -----------------------------------------------------------------------------------------


def _unet_kwargs(text_dim: int = tiny.TEXT_DIM) -> dict[str, Any]:
    return {"sample": _randn(1, 4, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, text_dim, seed=101)}


@builder("UNet2DConditionModel")
def unet_sd1():
    return tiny.unet("sd1"), _unet_kwargs()


@builder("UNet2DConditionModel:sdxl")
def unet_sdxl():
    kwargs = _unet_kwargs(2 * tiny.TEXT_DIM)
    kwargs["added_cond_kwargs"] = {"text_embeds": _randn(1, tiny.TEXT_DIM, seed=102), "time_ids": _randn(1, 6, seed=103)}
    return tiny.unet("sdxl"), kwargs


@builder("ControlNetModel")
def controlnet():
    kwargs = _unet_kwargs()
    kwargs["controlnet_cond"] = _randn(1, 3, 32, 32, seed=104)
    return tiny.controlnet(tiny.unet("sd1")), kwargs


def _motion_adapter(seed: int = 2):
    from diffusers import MotionAdapter

    _seeded(seed)
    return MotionAdapter(
        block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=2, motion_norm_num_groups=8,
        motion_max_seq_length=8,
    )


def _video_unet_kwargs(frames: int = 2, text_dim: int = tiny.TEXT_DIM) -> dict[str, Any]:
    return {
        "sample": _randn(1, 4, frames, 16, 16), "timestep": _t(),
        "encoder_hidden_states": _randn(1, TEXT_LEN, text_dim, seed=101),
    }


def _motion_kwargs(frames: int = 2) -> dict[str, Any]:
    """UNetMotionModel wants the text per frame, (B * F, T, C), as AnimateDiffPipeline repeats it."""
    kwargs = _video_unet_kwargs(frames)
    kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].repeat_interleave(frames, dim=0)
    return kwargs


@builder("UNetMotionModel")
def unet_motion():
    """AnimateDiff's layout: a tiny SD 1.x U-Net with a motion adapter inserted (``from_unet2d``)."""
    from diffusers import UNetMotionModel

    model = UNetMotionModel.from_unet2d(tiny.unet("sd1"), _motion_adapter())
    return model, _motion_kwargs()


@builder("UNetMotionModel:direct")
def unet_motion_direct():
    from diffusers import UNetMotionModel

    _seeded()
    model = UNetMotionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=tiny.TEXT_DIM,
        num_attention_heads=4, down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), motion_max_seq_length=8, motion_num_attention_heads=2,
    )
    return model, _motion_kwargs()


@builder("UNetSpatioTemporalConditionModel")
def unet_svd():
    from diffusers import UNetSpatioTemporalConditionModel

    _seeded()
    model = UNetSpatioTemporalConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=8, out_channels=4, cross_attention_dim=tiny.TEXT_DIM,
        num_attention_heads=(2, 4), addition_time_embed_dim=8, projection_class_embeddings_input_dim=3 * 8,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"), num_frames=2,
    )
    kwargs = {
        "sample": _randn(1, 2, 8, 16, 16), "timestep": _t(),  # (B, F, C, H, W): frames before channels
        "encoder_hidden_states": _randn(1, 1, tiny.TEXT_DIM, seed=101), "added_time_ids": torch.tensor([[6.0, 127.0, 0.02]]),
    }
    return model, kwargs


@builder("UNet3DConditionModel")
def unet_3d():
    from diffusers import UNet3DConditionModel

    _seeded()
    model = UNet3DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=tiny.TEXT_DIM,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    )
    return model, _video_unet_kwargs()


@builder("I2VGenXLUNet")
def unet_i2vgen():
    from diffusers import I2VGenXLUNet

    _seeded()
    model = I2VGenXLUNet(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=tiny.TEXT_DIM,
        attention_head_dim=8, num_attention_heads=None, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
    )
    kwargs = _video_unet_kwargs()
    kwargs.update(fps=torch.tensor([8]), image_latents=_randn(1, 4, 2, 16, 16, seed=105),
                  image_embeddings=_randn(1, tiny.TEXT_DIM, seed=106))
    return model, kwargs


# --- DiT / MMDiT transformers ---------------------------------------------------------------------


@builder("PixArtTransformer2DModel")
def pixart():
    from diffusers import PixArtTransformer2DModel

    _seeded()
    model = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=16,
        in_channels=4, cross_attention_dim=16, out_channels=8, norm_num_groups=8,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "added_cond_kwargs": {"aspect_ratio": None, "resolution": None},
    }
    return model, kwargs


@builder("DiTTransformer2DModel")
def dit():
    from diffusers import DiTTransformer2DModel

    _seeded()
    model = DiTTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, in_channels=4,
        out_channels=8, norm_num_groups=8, num_embeds_ada_norm=1000,
    )
    return model, {"hidden_states": _randn(1, 4, 16, 16), "timestep": _t().long(), "class_labels": torch.tensor([3])}


def _sd3(dual: tuple[int, ...], qk_norm: str | None):
    from diffusers import SD3Transformer2DModel

    _seeded()
    model = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=3, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=24, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4, pos_embed_max_size=32,
        dual_attention_layers=dual, qk_norm=qk_norm,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "pooled_projections": _randn(1, 12, seed=102), "timestep": _t(),
    }
    return model, kwargs


@builder("SD3Transformer2DModel")
def sd3():
    return _sd3((), None)


@builder("SD3Transformer2DModel:sd35")
def sd35():
    """SD3.5 layout: dual attention (an extra image-only self-attention) in the first blocks, RMS q/k norm."""
    return _sd3((0, 1), "rms_norm")


def flux_ids(height: int, width: int, text_len: int = TEXT_LEN) -> tuple[Tensor, Tensor]:
    """Flux's position ids for an (height, width) packed-token grid, as FluxPipeline builds them."""
    img_ids = torch.zeros(height, width, 3)
    img_ids[..., 1] = torch.arange(height)[:, None]
    img_ids[..., 2] = torch.arange(width)[None, :]
    return img_ids.reshape(height * width, 3), torch.zeros(text_len, 3)


@builder("FluxTransformer2DModel")
def flux():
    from diffusers import FluxTransformer2DModel

    _seeded()
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=(4, 6, 6),
    )
    img_ids, txt_ids = flux_ids(8, 8)
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "pooled_projections": _randn(1, 12, seed=102), "timestep": torch.tensor([0.5]), "img_ids": img_ids, "txt_ids": txt_ids,
    }
    return model, kwargs


@builder("FluxTransformer2DModel:guidance")
def flux_dev():
    """Flux.1-dev layout: a guidance embedding (guidance-distilled)."""
    from diffusers import FluxTransformer2DModel

    _seeded()
    model = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=(4, 6, 6), guidance_embeds=True,
    )
    img_ids, txt_ids = flux_ids(4, 6)
    kwargs = {
        "hidden_states": _randn(1, 24, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "pooled_projections": _randn(1, 12, seed=102), "timestep": torch.tensor([0.5]), "img_ids": img_ids,
        "txt_ids": txt_ids, "guidance": torch.tensor([3.5]),
    }
    return model, kwargs


@builder("SanaTransformer2DModel")
def sana():
    from diffusers import SanaTransformer2DModel

    _seeded()
    model = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16, sample_size=16,
    )
    kwargs = {"hidden_states": _randn(1, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t()}
    return model, kwargs


def _wan(**config: Any):
    from diffusers import WanTransformer3DModel

    _seeded()
    base = dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    return WanTransformer3DModel(**{**base, **config})


@builder("WanTransformer3DModel")
def wan():
    kwargs = {"hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101)}
    return _wan(), kwargs


@builder("WanTransformer3DModel:i2v")
def wan_i2v():
    """Wan 2.1 I2V layout: CLIP image tokens prepended to the text, separate image-context key/values."""
    model = _wan(image_dim=16, added_kv_proj_dim=24)
    kwargs = {
        "hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, 512, 16, seed=101),
        "encoder_hidden_states_image": _randn(1, 4, 16, seed=102),
    }
    return model, kwargs


@builder("WanTransformer3DModel:ti2v")
def wan_ti2v():
    """Wan 2.2 TI2V layout: a timestep per token, so the modulation is per token."""
    kwargs = {
        "hidden_states": _randn(1, 4, 2, 16, 16), "timestep": torch.full((1, 2 * 8 * 8), 500.0),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
    }
    return _wan(), kwargs


# --- the other image transformers -------------------------------------------------------------------


@builder("AuraFlowTransformer2DModel")
def auraflow():
    from diffusers import AuraFlowTransformer2DModel

    _seeded()
    model = AuraFlowTransformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_mmdit_layers=1, num_single_dit_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=16, out_channels=4, pos_embed_max_size=64,
    )
    kwargs = {"hidden_states": _randn(1, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101), "timestep": _t()}
    return model, kwargs


@builder("HunyuanDiT2DModel")
def hunyuan_dit():
    from diffusers import HunyuanDiT2DModel

    _seeded()
    model = HunyuanDiT2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=16, hidden_size=16, num_layers=2,
        cross_attention_dim=24, cross_attention_dim_t5=32, pooled_projection_dim=12, text_len=TEXT_LEN, text_len_t5=6,
        use_style_cond_and_image_meta_size=False,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "text_embedding_mask": torch.ones(1, TEXT_LEN), "encoder_hidden_states_t5": _randn(1, 6, 32, seed=102),
        "text_embedding_mask_t5": torch.ones(1, 6), "image_rotary_emb": _hunyuan_rope(8, 8, 8),
    }
    return model, kwargs


def _hunyuan_rope(head_dim: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    return get_2d_rotary_pos_embed(head_dim, ((0, 0), (h, w)), (h, w), use_real=True)


@builder("LuminaNextDiT2DModel")
def lumina_next():
    from diffusers import LuminaNextDiT2DModel
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    _seeded()
    model = LuminaNextDiT2DModel(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_attention_heads=3, num_kv_heads=1,
        multiple_of=16, cross_attention_dim=32, learn_sigma=False,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "timestep": torch.tensor([0.5]), "encoder_hidden_states": _randn(1, TEXT_LEN, 32, seed=101),
        "encoder_mask": torch.ones(1, TEXT_LEN), "image_rotary_emb": get_2d_rotary_pos_embed_lumina(8, 384, 384, linear_factor=1, ntk_factor=1),
        "cross_attention_kwargs": {},  # the model unpacks it: None fails
    }
    return model, kwargs


@builder("Lumina2Transformer2DModel")
def lumina2():
    from diffusers import Lumina2Transformer2DModel

    _seeded()
    model = Lumina2Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, hidden_size=24, num_layers=2, num_refiner_layers=1, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 4, 4), axes_lens=(32, 32, 32), cap_feat_dim=16,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "timestep": torch.tensor([0.5]), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "encoder_attention_mask": torch.ones(1, TEXT_LEN, dtype=torch.bool),
    }
    return model, kwargs


@builder("QwenImageTransformer2DModel")
def qwen_image():
    from diffusers import QwenImageTransformer2DModel

    _seeded()
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, axes_dims_rope=(4, 6, 6),
    )
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "encoder_hidden_states_mask": torch.ones(1, TEXT_LEN, dtype=torch.long), "timestep": torch.tensor([0.5]),
        "img_shapes": [[(1, 8, 8)]],
    }
    return model, kwargs


@builder("ChromaTransformer2DModel")
def chroma():
    from diffusers import ChromaTransformer2DModel

    _seeded()
    model = ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=16,
        approximator_layers=1,
    )
    img_ids, txt_ids = flux_ids(8, 8)
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "timestep": torch.tensor([0.5]), "img_ids": img_ids, "txt_ids": txt_ids,
    }
    return model, kwargs


@builder("Flux2Transformer2DModel")
def flux2():
    from diffusers import Flux2Transformer2DModel

    _seeded()
    model = Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
    )
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(8.0), torch.arange(8.0), torch.zeros(1), indexing="ij"), -1)
    txt_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.arange(float(TEXT_LEN)), indexing="ij"), -1)
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "timestep": torch.tensor([0.5]), "img_ids": img_ids.reshape(1, -1, 4), "txt_ids": txt_ids.reshape(1, -1, 4),
        "guidance": torch.tensor([3.5]),
    }
    return model, kwargs


@builder("HiDreamImageTransformer2DModel")
def hidream():
    from diffusers import HiDreamImageTransformer2DModel

    _seeded()
    model = HiDreamImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=1, num_single_layers=1, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[16, 12], text_emb_dim=12, num_routed_experts=2, num_activated_experts=1,
        axes_dims_rope=(4, 2, 2), max_resolution=(16, 16), llama_layers=(0, 1), force_inference_output=True,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "timesteps": torch.tensor([500]),
        "encoder_hidden_states_t5": _randn(1, TEXT_LEN, 16, seed=101),
        "encoder_hidden_states_llama3": _randn(2, 1, TEXT_LEN, 12, seed=102), "pooled_embeds": _randn(1, 12, seed=103),
    }
    return model, kwargs


# --- the other video transformers -------------------------------------------------------------------


@builder("CogVideoXTransformer3DModel")
def cogvideox():
    from diffusers import CogVideoXTransformer3DModel

    _seeded()
    model = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=16,
        num_layers=2, sample_width=16, sample_height=16, sample_frames=5, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN,
    )
    kwargs = {"hidden_states": _randn(1, 2, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t().long()}
    return model, kwargs


@builder("LTXVideoTransformer3DModel")
def ltx():
    from diffusers import LTXVideoTransformer3DModel

    _seeded()
    model = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, num_layers=2,
        caption_channels=16,
    )
    kwargs = {
        "hidden_states": _randn(1, 2 * 8 * 8, 8), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t(),
        "encoder_attention_mask": torch.ones(1, TEXT_LEN), "num_frames": 2, "height": 8, "width": 8,
    }
    return model, kwargs


@builder("MochiTransformer3DModel")
def mochi():
    from diffusers import MochiTransformer3DModel

    _seeded()
    model = MochiTransformer3DModel(
        patch_size=2, num_attention_heads=2, attention_head_dim=8, num_layers=2, pooled_projection_dim=16, in_channels=4,
        text_embed_dim=16, time_embed_dim=8, max_sequence_length=TEXT_LEN,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 2, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t(),
        "encoder_attention_mask": torch.ones(1, TEXT_LEN, dtype=torch.bool),
    }
    return model, kwargs


@builder("AllegroTransformer3DModel")
def allegro():
    from diffusers import AllegroTransformer3DModel

    _seeded()
    model = AllegroTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2, cross_attention_dim=16,
        sample_height=16, sample_width=16, sample_frames=2, caption_channels=16,
    )
    kwargs = {"hidden_states": _randn(1, 4, 2, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t()}
    return model, kwargs


@builder("LatteTransformer3DModel")
def latte():
    from diffusers import LatteTransformer3DModel

    _seeded()
    model = LatteTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1, cross_attention_dim=16,
        sample_size=16, patch_size=2, activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
        norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=16, video_length=2,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "enable_temporal_attentions": True,
    }
    return model, kwargs


@builder("CosmosTransformer3DModel")
def cosmos():
    from diffusers import CosmosTransformer3DModel

    _seeded()
    model = CosmosTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, text_embed_dim=16,
        adaln_lora_dim=4, max_size=(4, 32, 32), patch_size=(1, 2, 2), rope_scale=(2.0, 1.0, 1.0), concat_padding_mask=True,
        extra_pos_embed_type="learnable",
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "padding_mask": torch.zeros(1, 1, 16, 16),
    }
    return model, kwargs


# --- ControlNets ---------------------------------------------------------------------------------


@builder("MultiControlNetModel")
def multi_controlnet():
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel

    model = MultiControlNetModel([tiny.controlnet(tiny.unet("sd1"))])
    kwargs = _unet_kwargs()
    # return_dict=False as the pipelines pass it: the wrapper unpacks each net's output as a tuple
    kwargs.update(controlnet_cond=[_randn(1, 3, 32, 32, seed=104)], conditioning_scale=[1.0], return_dict=False)
    return model, kwargs


@builder("ControlNetUnionModel")
def controlnet_union():
    from diffusers import ControlNetUnionModel

    _seeded()
    model = ControlNetUnionModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=tiny.TEXT_DIM,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), conditioning_embedding_out_channels=(8, 16),
        num_control_type=2, num_trans_channel=32, num_trans_head=2, num_trans_layer=1, num_proj_channel=32,
        addition_time_embed_dim=8,
    )
    kwargs = _unet_kwargs()
    kwargs.update(controlnet_cond=[_randn(1, 3, 32, 32, seed=104)], control_type=torch.tensor([[1, 0]]), control_type_idx=[0])
    return model, kwargs


@builder("UNetControlNetXSModel")
def controlnet_xs():
    """Built from its own config: ``from_unet`` assumes two layers per block."""
    from diffusers import UNetControlNetXSModel

    _seeded()
    model = UNetControlNetXSModel(
        sample_size=16, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64), norm_num_groups=8, cross_attention_dim=tiny.TEXT_DIM, num_attention_heads=4,
        ctrl_block_out_channels=(4, 8), ctrl_num_attention_heads=2, ctrl_max_norm_num_groups=4,
        ctrl_conditioning_embedding_out_channels=(8, 16), ctrl_learn_time_embedding=True,
    )
    kwargs = _unet_kwargs()
    kwargs["controlnet_cond"] = _randn(1, 3, 32, 32, seed=104)
    return model, kwargs


@builder("SparseControlNetModel")
def sparse_controlnet():
    from diffusers import SparseControlNetModel

    _seeded()
    model = SparseControlNetModel(
        block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=tiny.TEXT_DIM,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
        conditioning_embedding_out_channels=(8, 16), motion_max_seq_length=8, motion_num_attention_heads=2, conditioning_channels=3,
        use_simplified_condition_embedding=False,
    )
    kwargs = _motion_kwargs()
    kwargs.update(controlnet_cond=_randn(1, 3, 2, 32, 32, seed=104), conditioning_mask=torch.ones(1, 1, 2, 32, 32))
    return model, kwargs


def _flux_controlnet(num_mode: int | None = None):
    from diffusers import FluxControlNetModel

    _seeded()
    return FluxControlNetModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, pooled_projection_dim=12, axes_dims_rope=[4, 6, 6], num_mode=num_mode,
    )


def _flux_controlnet_kwargs() -> dict[str, Any]:
    img_ids, txt_ids = flux_ids(8, 8)
    return {
        "hidden_states": _randn(1, 64, 16), "controlnet_cond": _randn(1, 64, 16, seed=104),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101), "pooled_projections": _randn(1, 12, seed=102),
        "timestep": torch.tensor([0.5]), "img_ids": img_ids, "txt_ids": txt_ids,
    }


@builder("FluxControlNetModel")
def flux_controlnet():
    return _flux_controlnet(), _flux_controlnet_kwargs()


@builder("FluxMultiControlNetModel")
def flux_multi_controlnet():
    from diffusers import FluxMultiControlNetModel

    kwargs = _flux_controlnet_kwargs()
    kwargs.update(
        controlnet_cond=[kwargs["controlnet_cond"]], controlnet_mode=[torch.tensor([1])], conditioning_scale=[1.0],
        return_dict=False,  # as FluxControlNetPipeline passes it: the wrapper unpacks each net's output as a tuple
    )
    return FluxMultiControlNetModel([_flux_controlnet(num_mode=2)]), kwargs  # one union net: the modes index it


def _sd3_controlnet():
    from diffusers import SD3ControlNetModel

    _seeded()
    return SD3ControlNetModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=24, caption_projection_dim=16, pooled_projection_dim=12, out_channels=4, pos_embed_max_size=32,
    )


def _sd3_controlnet_kwargs() -> dict[str, Any]:
    return {
        "hidden_states": _randn(1, 4, 16, 16), "controlnet_cond": _randn(1, 4, 16, 16, seed=104),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101), "pooled_projections": _randn(1, 12, seed=102), "timestep": _t(),
    }


@builder("SD3ControlNetModel")
def sd3_controlnet():
    return _sd3_controlnet(), _sd3_controlnet_kwargs()


@builder("SD3MultiControlNetModel")
def sd3_multi_controlnet():
    from diffusers import SD3MultiControlNetModel

    kwargs = _sd3_controlnet_kwargs()
    kwargs.update(controlnet_cond=[kwargs["controlnet_cond"]], conditioning_scale=[1.0])
    return SD3MultiControlNetModel([_sd3_controlnet()]), kwargs


@builder("SanaControlNetModel")
def sana_controlnet():
    from diffusers import SanaControlNetModel

    _seeded()
    model = SanaControlNetModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_cross_attention_heads=2,
        cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=16, sample_size=16,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t(),
        "controlnet_cond": _randn(1, 4, 16, 16, seed=104),
    }
    return model, kwargs


def _hunyuan_controlnet():
    from diffusers import HunyuanDiT2DControlNetModel

    _seeded()
    return HunyuanDiT2DControlNetModel(
        conditioning_channels=3, num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2, sample_size=16,
        hidden_size=16, transformer_num_layers=4, cross_attention_dim=24, cross_attention_dim_t5=32, pooled_projection_dim=12,
        text_len=TEXT_LEN, text_len_t5=6, use_style_cond_and_image_meta_size=False,
    )


def _hunyuan_controlnet_kwargs() -> dict[str, Any]:
    return {
        "hidden_states": _randn(1, 4, 16, 16), "timestep": _t(), "controlnet_cond": _randn(1, 4, 16, 16, seed=104),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101), "text_embedding_mask": torch.ones(1, TEXT_LEN),
        "encoder_hidden_states_t5": _randn(1, 6, 32, seed=102), "text_embedding_mask_t5": torch.ones(1, 6),
        "image_rotary_emb": _hunyuan_rope(8, 8, 8),
    }


@builder("HunyuanDiT2DControlNetModel")
def hunyuan_controlnet():
    return _hunyuan_controlnet(), _hunyuan_controlnet_kwargs()


@builder("HunyuanDiT2DMultiControlNetModel")
def hunyuan_multi_controlnet():
    from diffusers import HunyuanDiT2DMultiControlNetModel

    kwargs = _hunyuan_controlnet_kwargs()
    kwargs.update(controlnet_cond=[kwargs["controlnet_cond"]], conditioning_scale=[1.0])
    return HunyuanDiT2DMultiControlNetModel([_hunyuan_controlnet()]), kwargs


def _qwen_controlnet():
    from diffusers import QwenImageControlNetModel

    _seeded()
    return QwenImageControlNetModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, axes_dims_rope=(4, 6, 6),
    )


def _qwen_controlnet_kwargs() -> dict[str, Any]:
    return {
        "hidden_states": _randn(1, 64, 16), "controlnet_cond": _randn(1, 64, 16, seed=104),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "encoder_hidden_states_mask": torch.ones(1, TEXT_LEN, dtype=torch.long), "timestep": torch.tensor([0.5]),
        "img_shapes": [[(1, 8, 8)]],
    }


@builder("QwenImageControlNetModel")
def qwen_controlnet():
    return _qwen_controlnet(), _qwen_controlnet_kwargs()


@builder("QwenImageMultiControlNetModel")
def qwen_multi_controlnet():
    from diffusers import QwenImageMultiControlNetModel

    kwargs = _qwen_controlnet_kwargs()
    kwargs.update(controlnet_cond=[kwargs["controlnet_cond"]], conditioning_scale=[1.0])
    return QwenImageMultiControlNetModel([_qwen_controlnet()]), kwargs


# --- generic transformers and other U-Nets -----------------------------------------------------------


@builder("Transformer2DModel")
def transformer_2d():
    from diffusers import Transformer2DModel

    _seeded()
    model = Transformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=1, norm_num_groups=8, cross_attention_dim=16)
    kwargs = {"hidden_states": _randn(1, 16, 8, 8), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101)}
    return model, kwargs


@builder("TransformerTemporalModel")
def transformer_temporal():
    from diffusers import TransformerTemporalModel

    _seeded()
    model = TransformerTemporalModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=1, norm_num_groups=8)
    return model, {"hidden_states": _randn(2, 16, 8, 8), "num_frames": 2}  # (B * F, C, H, W)


@builder("UNet2DModel")
def unet_2d():
    from diffusers import UNet2DModel

    _seeded()
    model = UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
        attention_head_dim=8, down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    )
    return model, {"sample": _randn(1, 3, 16, 16), "timestep": _t()}


@builder("PriorTransformer")
def prior():
    from diffusers import PriorTransformer

    _seeded()
    model = PriorTransformer(num_attention_heads=2, attention_head_dim=8, num_layers=2, embedding_dim=16, num_embeddings=TEXT_LEN, additional_embeddings=4)
    kwargs = {
        "hidden_states": _randn(1, 16), "timestep": _t(), "proj_embedding": _randn(1, 16, seed=101),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=102),
    }
    return model, kwargs


@builder("UVit2DModel")
def uvit():
    from diffusers import UVit2DModel

    _seeded()
    model = UVit2DModel(
        hidden_size=32, cond_embed_dim=16, micro_cond_encode_dim=2, micro_cond_embed_dim=10, encoder_hidden_size=16,
        vocab_size=64, codebook_size=32, in_channels=16, block_out_channels=16, num_res_blocks=1, block_num_heads=2,
        num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, sample_size=8,
    )
    kwargs = {
        "input_ids": torch.randint(0, 32, (1, 8, 8), generator=torch.Generator().manual_seed(0)),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "pooled_text_emb": _randn(1, 16, seed=102),
        "micro_conds": _randn(1, 5, seed=103),
    }
    return model, kwargs


@builder("Kandinsky3UNet")
def kandinsky3():
    from diffusers import Kandinsky3UNet

    _seeded()
    model = Kandinsky3UNet(
        in_channels=4, time_embedding_dim=32, groups=8, attention_head_dim=8, layers_per_block=2, block_out_channels=(32, 32, 32, 32),
        cross_attention_dim=32, encoder_hid_dim=16,
    )
    kwargs = {
        "sample": _randn(1, 4, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "encoder_attention_mask": torch.ones(1, TEXT_LEN),
    }
    return model, kwargs  # (layers_per_block=1 does not build: the up path's channels then mismatch)


@builder("StableCascadeUNet")
def stable_cascade():
    from diffusers import StableCascadeUNet

    _seeded()
    model = StableCascadeUNet(
        in_channels=4, out_channels=4, timestep_ratio_embedding_dim=8, patch_size=1, conditioning_dim=16, block_out_channels=(16, 16),
        num_attention_heads=(2, 2), down_num_layers_per_block=(1, 1), up_num_layers_per_block=(1, 1), clip_text_in_channels=16,
        clip_text_pooled_in_channels=16, clip_image_in_channels=16, clip_seq=2, dropout=(0.0, 0.0),
        block_types_per_layer=(("SDCascadeResBlock", "SDCascadeTimestepBlock", "SDCascadeAttnBlock"),) * 2,
    )
    kwargs = {
        "sample": _randn(1, 4, 16, 16), "timestep_ratio": torch.tensor([0.5]), "clip_text_pooled": _randn(1, 1, 16, seed=101),
        "clip_text": _randn(1, TEXT_LEN, 16, seed=102), "clip_img": _randn(1, 1, 16, seed=103),
    }
    return model, kwargs


@builder("ZImageTransformer2DModel")
def z_image():
    from diffusers import ZImageTransformer2DModel

    _seeded()
    model = ZImageTransformer2DModel(
        in_channels=4, dim=32, n_layers=2, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6],
        axes_lens=[64, 32, 32],
    )
    kwargs = {"x": [_randn(4, 1, 16, 16)], "t": torch.tensor([0.5]), "cap_feats": [_randn(TEXT_LEN, 16, seed=101)]}
    return model, kwargs


# --- more image / video transformers ---------------------------------------------------------------


def _flux_like_kwargs(text_dim: int = 24, pooled: int | None = 12) -> dict[str, Any]:
    img_ids, txt_ids = flux_ids(8, 8)
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, text_dim, seed=101),
        "timestep": torch.tensor([0.5]), "img_ids": img_ids, "txt_ids": txt_ids,
    }
    if pooled is not None:
        kwargs["pooled_projections"] = _randn(1, pooled, seed=102)
    return kwargs


@builder("BriaTransformer2DModel")
def bria():
    from diffusers import BriaTransformer2DModel

    _seeded()
    model = BriaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, axes_dims_rope=[4, 6, 6],
    )
    return model, _flux_like_kwargs(pooled=None)


@builder("LongCatImageTransformer2DModel")
def longcat_image():
    from diffusers import LongCatImageTransformer2DModel

    _seeded()
    model = LongCatImageTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, pooled_projection_dim=24, axes_dims_rope=[4, 6, 6],
    )
    return model, _flux_like_kwargs(pooled=None)


@builder("OvisImageTransformer2DModel")
def ovis_image():
    from diffusers import OvisImageTransformer2DModel

    _seeded()
    model = OvisImageTransformer2DModel(
        patch_size=1, in_channels=16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=24, axes_dims_rope=(4, 6, 6),
    )
    return model, _flux_like_kwargs(pooled=None)


def _cogview_kwargs() -> dict[str, Any]:
    return {
        "hidden_states": _randn(1, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t(),
        "original_size": torch.tensor([[32.0, 32.0]]), "target_size": torch.tensor([[32.0, 32.0]]),
        "crop_coords": torch.tensor([[0.0, 0.0]]),
    }


@builder("CogView3PlusTransformer2DModel")
def cogview3():
    from diffusers import CogView3PlusTransformer2DModel

    _seeded()
    model = CogView3PlusTransformer2DModel(
        patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2, out_channels=4, text_embed_dim=16,
        time_embed_dim=8, condition_dim=2, pos_embed_max_size=16, sample_size=16,
    )
    return model, _cogview_kwargs()


@builder("CogView4Transformer2DModel")
def cogview4():
    from diffusers import CogView4Transformer2DModel

    _seeded()
    model = CogView4Transformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2, text_embed_dim=16,
        time_embed_dim=8, condition_dim=2, pos_embed_max_size=16, sample_size=16, rope_axes_dim=(4, 4),
    )
    return model, _cogview_kwargs()


@builder("HunyuanVideoTransformer3DModel")
def hunyuan_video():
    from diffusers import HunyuanVideoTransformer3DModel

    _seeded()
    model = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=12, rope_axes_dim=(2, 4, 4),
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "encoder_attention_mask": torch.ones(1, TEXT_LEN), "pooled_projections": _randn(1, 12, seed=102),
        "guidance": torch.tensor([3500.0]),
    }
    return model, kwargs


@builder("HunyuanImageTransformer2DModel")
def hunyuan_image():
    from diffusers import HunyuanImageTransformer2DModel

    _seeded()
    model = HunyuanImageTransformer2DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=(2, 2), text_embed_dim=16, rope_axes_dim=(4, 4),
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "encoder_attention_mask": torch.ones(1, TEXT_LEN),
    }
    return model, kwargs


def _wan_like(cls_name: str, **extra: Any):
    import diffusers

    _seeded()
    return getattr(diffusers, cls_name)(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=32, ffn_dim=32, num_layers=2, rope_max_seq_len=32, **extra,
    )


def _wan_kwargs() -> dict[str, Any]:
    return {"hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101)}


@builder("SkyReelsV2Transformer3DModel")
def skyreels_v2():
    return _wan_like("SkyReelsV2Transformer3DModel"), _wan_kwargs()


@builder("ChronoEditTransformer3DModel")
def chronoedit():
    return _wan_like("ChronoEditTransformer3DModel"), _wan_kwargs()


@builder("WanVACETransformer3DModel")
def wan_vace():
    model = _wan_like("WanVACETransformer3DModel", vace_layers=[0], vace_in_channels=8)
    kwargs = _wan_kwargs()
    kwargs["control_hidden_states"] = _randn(1, 8, 2, 16, 16, seed=104)
    return model, kwargs


@builder("EasyAnimateTransformer3DModel")
def easyanimate():
    from diffusers import EasyAnimateTransformer3DModel

    _seeded()
    model = EasyAnimateTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, sample_width=16,
        sample_height=16, num_layers=2, mmdit_layers=2, time_embed_dim=8, text_embed_dim=16,
    )
    kwargs = {"hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101)}
    return model, kwargs


@builder("SanaVideoTransformer3DModel")
def sana_video():
    from diffusers import SanaVideoTransformer3DModel

    _seeded()
    model = SanaVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=2, num_cross_attention_heads=2,
        cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16, sample_size=16, rope_max_seq_len=32,
    )
    kwargs = {"hidden_states": _randn(1, 4, 2, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t()}
    return model, kwargs


@builder("QwenImage21Transformer2DModel")
def qwen_image21():
    from diffusers import QwenImage21Transformer2DModel

    _seeded()
    model = QwenImage21Transformer2DModel(
        patch_size=1, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        context_in_dim=24, axes_dims_rope=(4, 6, 6),
    )
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101), "timestep": torch.tensor([0.5]),
        "img_shapes": [[(1, 8, 8)]],
        # the joint sequence: the prompt, then one slot per 2x2 latent tokens of the target image
        "img_mask": torch.cat([torch.zeros(1, TEXT_LEN, dtype=torch.bool), torch.ones(1, 64 // 4, dtype=torch.bool)], dim=1),
    }
    return model, kwargs


# --- tiny offline pipelines ---------------------------------------------------------------------------
#
# PIPELINES[name](folder) -> (pipeline, call kwargs): every component built offline from a config (text
# encoders and tokenizers too; a tokenizer that needs files is written under ``folder``), the call kwargs
# give 2 steps at a tiny size. Scheduler classes are the ones each pipeline ships with.

T5_DIM = 24  # width of the tiny T5 / UMT5 / Gemma text encoders


def t5_tokenizer():
    """A T5 (Unigram) tokenizer over single characters, built in memory: no files, no download."""
    import string

    from transformers import T5Tokenizer

    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    return T5Tokenizer(vocab=specials + [(c, -3.0) for c in string.ascii_letters + string.digits + ",.!?'-"], extra_ids=0)


def gemma_tokenizer():
    """A Gemma (BPE) tokenizer over single characters, no merges, built in memory."""
    import string

    from transformers import GemmaTokenizer

    symbols = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\u2581"] + list(string.ascii_letters + string.digits + ",.!?'-:<>_")
    return GemmaTokenizer(vocab={s: i for i, s in enumerate(symbols)}, merges=[])


def t5_encoder(vocab_size: int, umt5: bool = False, seed: int = 3, width: int = T5_DIM):
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    _seeded(seed)
    config_class, model_class = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_class(vocab_size=vocab_size, d_model=width, d_ff=32, d_kv=8, num_layers=1, num_heads=2, relative_attention_num_buckets=8)
    return model_class(config).eval()


def gemma_encoder(vocab_size: int, seed: int = 3):
    from transformers import Gemma2Config, Gemma2Model

    _seeded(seed)
    config = Gemma2Config(
        vocab_size=vocab_size, hidden_size=T5_DIM, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=12, pad_token_id=0,
    )
    return Gemma2Model(config).eval()


def _vae(latent_channels: int, shift: float | None = None):
    from diffusers import AutoencoderKL

    _seeded()
    return AutoencoderKL(
        block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels, norm_num_groups=8, sample_size=32, shift_factor=shift,
    ).eval()


def _flow_scheduler(**config: Any):
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**config)


PROMPT = "a red circle"


def flux_pipeline(folder):
    from diffusers import FluxPipeline, FluxTransformer2DModel

    tokenizer_2 = t5_tokenizer()
    _seeded()
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=T5_DIM, pooled_projection_dim=tiny.TEXT_DIM, axes_dims_rope=(4, 6, 6),
    )
    pipe = FluxPipeline(
        scheduler=_flow_scheduler(), vae=_vae(4, shift=0.0), text_encoder=tiny.text_encoder(), tokenizer=tiny.tokenizer(folder),
        text_encoder_2=t5_encoder(len(tokenizer_2)), tokenizer_2=tokenizer_2, transformer=transformer,
    )
    return pipe, {"prompt": PROMPT, "height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 16, "guidance_scale": 3.5}


def sd3_pipeline(folder):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer_3 = t5_tokenizer()
    sd3_text_dim = 2 * tiny.TEXT_DIM  # the pipeline pads the two CLIP embeddings (concatenated) to the T5 width
    _seeded()
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=sd3_text_dim, caption_projection_dim=16,
        pooled_projection_dim=2 * tiny.TEXT_DIM, out_channels=4, pos_embed_max_size=32,
    )
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=_flow_scheduler(shift=3.0), vae=_vae(4, shift=0.0),
        text_encoder=tiny.text_encoder(projection=True), tokenizer=tiny.tokenizer(folder),
        text_encoder_2=tiny.text_encoder(projection=True, seed=1), tokenizer_2=tiny.tokenizer(folder / "2"),
        text_encoder_3=t5_encoder(len(tokenizer_3), width=sd3_text_dim), tokenizer_3=tokenizer_3,
    )
    return pipe, {"prompt": PROMPT, "height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 16}


def pixart_sigma_pipeline(folder):
    from diffusers import DPMSolverMultistepScheduler, PixArtSigmaPipeline, PixArtTransformer2DModel

    tokenizer = t5_tokenizer()
    _seeded()
    transformer = PixArtTransformer2DModel(
        sample_size=16, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=2, caption_channels=T5_DIM,
        in_channels=4, cross_attention_dim=16, out_channels=8, norm_num_groups=8,
    )
    pipe = PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=t5_encoder(len(tokenizer)), vae=_vae(4), transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    call = {"prompt": PROMPT, "height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 16, "use_resolution_binning": False,
            "clean_caption": False}  # (clean_caption needs beautifulsoup4 and ftfy)
    return pipe, call


def sana_pipeline(folder):
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = gemma_tokenizer()
    _seeded()
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types=("ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "EfficientViTBlock"), encoder_block_out_channels=(8, 8), decoder_block_out_channels=(8, 8),
        encoder_qkv_multiscales=((), (5,)), decoder_qkv_multiscales=((), (5,)), encoder_layers_per_block=(1, 1),
        decoder_layers_per_block=(1, 1), upsample_block_type="interpolate", downsample_block_type="stride_conv",
        decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
    ).eval()
    _seeded()
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=2, num_attention_heads=2, attention_head_dim=8,
        num_cross_attention_heads=2, cross_attention_head_dim=8, cross_attention_dim=16, caption_channels=T5_DIM, sample_size=16,
    )
    pipe = SanaPipeline(
        tokenizer=tokenizer, text_encoder=gemma_encoder(len(tokenizer)), vae=vae, transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    )
    call = {
        "prompt": PROMPT, "height": 32, "width": 32, "num_inference_steps": 2, "max_sequence_length": 16,
        "use_resolution_binning": False, "complex_human_instruction": None, "clean_caption": False,
    }
    return pipe, call


def animatediff_pipeline(folder):
    from diffusers import AnimateDiffPipeline

    pipe = AnimateDiffPipeline(
        vae=tiny.vae(), text_encoder=tiny.text_encoder(), tokenizer=tiny.tokenizer(folder), unet=tiny.unet("sd1"),
        motion_adapter=_motion_adapter(), scheduler=tiny.scheduler(), feature_extractor=None, image_encoder=None,
    )
    return pipe, {"prompt": PROMPT, "height": 32, "width": 32, "num_frames": 2, "num_inference_steps": 2, "output_type": "np"}


def svd_pipeline(folder):
    from diffusers import AutoencoderKLTemporalDecoder, EulerDiscreteScheduler, StableVideoDiffusionPipeline
    from PIL import Image
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    unet, _ = unet_svd()
    _seeded()
    vae = AutoencoderKLTemporalDecoder(
        block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2, latent_channels=4, layers_per_block=1,
        sample_size=32,  # (its group norms have 32 groups: no narrower)
    ).eval()
    _seeded()
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(image_size=224, patch_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, projection_dim=tiny.TEXT_DIM)
    ).eval()
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="v_prediction",
        interpolation_type="linear", use_karras_sigmas=True, sigma_min=0.002, sigma_max=700.0, timestep_spacing="leading",
        timestep_type="continuous",
    )
    pipe = StableVideoDiffusionPipeline(
        vae=vae, image_encoder=image_encoder, unet=unet.eval(), scheduler=scheduler,
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
    )
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    call = {"image": image, "height": 32, "width": 32, "num_frames": 2, "num_inference_steps": 2, "decode_chunk_size": 2, "output_type": "np"}
    return pipe, call


def wan_pipeline(folder):
    from diffusers import AutoencoderKLWan, WanPipeline

    tokenizer = t5_tokenizer()
    _seeded()
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    ).eval()
    _seeded()
    transformer = _wan(text_dim=T5_DIM)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=t5_encoder(len(tokenizer), umt5=True), vae=vae, transformer=transformer,
        scheduler=_flow_scheduler(shift=3.0),
    )
    call = {"prompt": PROMPT, "height": 32, "width": 32, "num_frames": 5, "num_inference_steps": 2, "max_sequence_length": 16, "output_type": "np"}
    return pipe, call


PIPELINES: dict[str, Callable[[Any], tuple[Any, dict[str, Any]]]] = {
    "FluxPipeline": flux_pipeline,
    "StableDiffusion3Pipeline": sd3_pipeline,
    "PixArtSigmaPipeline": pixart_sigma_pipeline,
    "SanaPipeline": sana_pipeline,
    "AnimateDiffPipeline": animatediff_pipeline,
    "StableVideoDiffusionPipeline": svd_pipeline,
    "WanPipeline": wan_pipeline,
}


# --- more builders (after the pipelines: the rest of the zoo) --------------------------------------


@builder("DreamLiteTransformer2DModel")
def dreamlite_transformer():
    from diffusers import DreamLiteTransformer2DModel

    _seeded()
    model = DreamLiteTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=16, num_layers=1, norm_num_groups=8, cross_attention_dim=16)
    return model, {"hidden_states": _randn(1, 16, 8, 8), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101)}


@builder("DreamLiteUNetModel")
def dreamlite_unet():
    from diffusers import DreamLiteUNetModel

    _seeded()
    model = DreamLiteUNetModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=tiny.TEXT_DIM,
        attention_head_dim=8, down_block_types=("DreamLiteCrossAttnNoSelfAttnDownBlock2D", "DreamLiteCrossAttnDownBlock2D"),
        up_block_types=("DreamLiteCrossAttnUpBlock2D", "DreamLiteCrossAttnUpBlock2D"),
    )
    return model, _unet_kwargs()


@builder("AudioLDM2UNet2DConditionModel")
def audioldm2_unet():
    from diffusers import AudioLDM2UNet2DConditionModel

    _seeded()
    model = AudioLDM2UNet2DConditionModel(
        sample_size=16, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=[tiny.TEXT_DIM, tiny.TEXT_DIM],
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    kwargs = _unet_kwargs()  # two cross-attentions per block: encoder_hidden_states and _1 (T5 / GPT-2 in AudioLDM2)
    kwargs["encoder_hidden_states_1"] = _randn(1, 6, tiny.TEXT_DIM, seed=102)
    return model, kwargs


@builder("BriaFiboTransformer2DModel")
def bria_fibo():
    from diffusers import BriaFiboTransformer2DModel

    _seeded()
    model = BriaFiboTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, axes_dims_rope=[4, 6, 6], text_encoder_dim=24,
    )
    kwargs = _flux_like_kwargs(pooled=None)
    kwargs["text_encoder_layers"] = [_randn(1, TEXT_LEN, 24, seed=103 + i) for i in range(2)]
    return model, kwargs


@builder("PRXTransformer2DModel")
def prx():
    from diffusers import PRXTransformer2DModel

    _seeded()
    model = PRXTransformer2DModel(in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=2, axes_dim=[8, 8])
    kwargs = {"hidden_states": _randn(1, 4, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101)}
    return model, kwargs


@builder("MotifVideoTransformer3DModel")
def motif_video():
    from diffusers import MotifVideoTransformer3DModel

    _seeded()
    model = MotifVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        patch_size=2, text_embed_dim=16, rope_axes_dim=(2, 4, 4),
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 2, 16, 16), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "encoder_attention_mask": torch.ones(1, TEXT_LEN),
    }
    return model, kwargs


@builder("ErnieImageTransformer2DModel")
def ernie_image():
    from diffusers import ErnieImageTransformer2DModel

    _seeded()
    model = ErnieImageTransformer2DModel(
        hidden_size=32, num_attention_heads=2, num_layers=2, ffn_hidden_size=32, in_channels=4, out_channels=4, patch_size=1,
        text_in_dim=16, rope_axes_dim=(4, 6, 6),
    )
    kwargs = {"hidden_states": _randn(1, 4, 8, 8), "timestep": _t(), "text_bth": _randn(1, TEXT_LEN, 16, seed=101), "text_lens": torch.tensor([TEXT_LEN])}
    return model, kwargs


@builder("NucleusMoEImageTransformer2DModel")
def nucleus_moe():
    from diffusers import NucleusMoEImageTransformer2DModel

    _seeded()
    model = NucleusMoEImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, axes_dims_rope=(4, 6, 6), num_experts=2, moe_intermediate_dim=16, moe_enabled=False,
    )
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "img_shapes": [(1, 8, 8)], "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "encoder_hidden_states_mask": torch.ones(1, TEXT_LEN, dtype=torch.long), "timestep": torch.tensor([0.5]),
    }
    return model, kwargs


@builder("Flux3Transformer2DModel")
def flux3():
    from diffusers import Flux3Transformer2DModel

    _seeded()
    model = Flux3Transformer2DModel(
        in_channels=16, cond_in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=24, timestep_channels=32, axes_dims_rope=(4, 4, 4, 4),
    )
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(8.0), torch.arange(8.0), torch.zeros(1), indexing="ij"), -1)
    txt_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.arange(float(TEXT_LEN)), indexing="ij"), -1)
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 24, seed=101),
        "timestep": torch.tensor([0.5]), "img_ids": img_ids.reshape(-1, 4), "txt_ids": txt_ids.reshape(-1, 4),
    }
    return model, kwargs


# --- what is not built, and why -----------------------------------------------------------------------

_LATER = "image/video denoiser not built yet: "

NOT_BUILT: dict[str, str] = {
    # in scope for token merging (an image or video denoiser with attention), no tiny builder yet
    "AnyFlowFARTransformer3DModel": _LATER + "AnyFlow-FAR needs frame-autoregressive context inputs",
    "BriaFibo2Transformer2DModel": _LATER + "perceiver gist tokens with minimum text lengths (>= 256 tokens)",
    "Cosmos3OmniTransformer": _LATER + "Cosmos 3 omni (audio + video) model with many modality inputs",
    "CosmosControlNetModel": _LATER + "Cosmos-Transfer control branch: needs the Cosmos base model's block samples",
    "JoyImageEditPlusTransformer3DModel": _LATER + "multi-image edit inputs (B, images, C, F, H, W) with a shape list",
    "Kandinsky6SRTransformer3DModel": _LATER + "Kandinsky 6 super-resolution stage",
    "LTX2VideoTransformer3DModel": _LATER + "joint audio + video model (two streams with their own coordinates)",
    "MiniMaxH3Transformer3DModel": _LATER + "MiniMax H3 audio-video model",
    "SanaWMLTX2RefinerTransformer3DModel": _LATER + "Sana world-model refiner on LTX-2 latents",
    "UniDiffuserModel": _LATER + "joint image/text UViT (deprecated pipeline)",
    "WanAnimate2Transformer3DModel": _LATER + "pose latents, face pixels and a motion encoder",
    "ZImageControlNetModel": _LATER + "control context for chosen Z-Image layers (needs the base model's refiner outputs)",
    "LTX2VideoDiffusionDecoderModel": _LATER + "LTX-2 diffusion decoder (a VAE-side denoiser)",
}

_VAE = "autoencoder: attention only in its encoder/decoder mid blocks; token merging serves the denoiser"
_AUDIO = "audio model: a 1-D token sequence, no image or video grid"
_PART = "a component, not a denoiser: "

OUT_OF_SCOPE: dict[str, str] = {
    **{name: _VAE for name in (
        "AsymmetricAutoencoderKL", "AutoencoderDC", "AutoencoderKL", "AutoencoderKLAllegro", "AutoencoderKLCogVideoX",
        "AutoencoderKLCosmos", "AutoencoderKLFlux2", "AutoencoderKLHunyuanImage", "AutoencoderKLHunyuanImageRefiner",
        "AutoencoderKLHunyuanVideo", "AutoencoderKLHunyuanVideo15", "AutoencoderKLKVAE", "AutoencoderKLKVAEVideo",
        "AutoencoderKLLTX2Video", "AutoencoderKLLTXVideo", "AutoencoderKLMagvit", "AutoencoderKLMiniMaxH3", "AutoencoderKLMochi",
        "AutoencoderKLQwenImage", "AutoencoderKLQwenImage21", "AutoencoderKLTemporalDecoder", "AutoencoderKLWan",
        "AutoencoderRAE", "AutoencoderSAME", "AutoencoderTiny", "AutoencoderVidTok", "ConsistencyDecoderVAE",
        "Kandinsky6SRVAE", "VQModel", "RFD4ProteinaAutoencoder",
    )},
    **{name: _AUDIO for name in (
        "AceStepTransformer1DModel", "AceStepAudioTokenDetokenizer", "AceStepAudioTokenizer", "AceStepConditionEncoder",
        "AutoencoderKLKVAEAudio", "AutoencoderKLLTX2Audio", "AutoencoderKLMiniMaxH3Audio", "AutoencoderOobleck",
        "Cosmos3AVAEAudioTokenizer", "LongCatAudioDiTTransformer", "LongCatAudioDiTVae", "MMAudioVAE", "MMAudioVocoder",
        "MiniMaxMusic3ConditionEncoder", "MiniMaxMusic3RVQDepthDecoder", "MiniMaxMusic3Transformer1DModel",
        "MiniMaxMusic3Vocoder", "StableAudio3DiTModel", "StableAudio3DurationEmbedder", "StableAudioDiTModel",
        "StableAudioProjectionModel", "T5FilmDecoder", "UNet1DModel", "AudioLDM2ProjectionModel",
    )},
    "RFD4ProteinaTransformer": "protein-structure model: residues, not an image grid",
    "AnimaTextConditioner": _PART + "a text-conditioning encoder",
    "UniDiffuserTextDecoder": _PART + "a GPT-2 text decoder",
    "CLIPImageProjection": _PART + "a linear projection of CLIP image embeddings (no attention)",
    "ReduxImageEncoder": _PART + "Flux Redux's image-embedding MLP (no attention)",
    "Ideogram4PromptEnhancerHead": _PART + "a prompt-enhancer head",
    "Kandinsky6SRLatentUpscalerBank": _PART + "a latent upscaler bank (no attention)",
    "T2IAdapter": _PART + "a convolutional adapter (no attention)",
    "MultiAdapter": _PART + "a list of T2I adapters (no attention)",
    "MotionAdapter": _PART + "weights only (its forward does nothing); served inside UNetMotionModel (zoo: UNetMotionModel)",
    "ControlNetXSAdapter": _PART + "runs only inside UNetControlNetXSModel (zoo: UNetControlNetXSModel)",
}


def model_mixin_classes() -> dict[str, type]:
    """Every ``ModelMixin`` subclass that ``diffusers`` exports at top level, by name."""
    import diffusers
    from diffusers.models.modeling_utils import ModelMixin

    found = {}
    for name in dir(diffusers):
        obj = getattr(diffusers, name)
        if inspect.isclass(obj) and issubclass(obj, ModelMixin) and obj is not ModelMixin:
            found[name] = obj
    return found


def attention_modules(model: nn.Module) -> list[str]:
    """Names of the attention modules in ``model``: any module whose class name contains "Attention" or that
    carries an attention processor."""
    return [name for name, m in model.named_modules() if "Attention" in type(m).__name__ or hasattr(m, "processor")]


@builder("Kandinsky5Transformer3DModel")
def kandinsky5():
    """Channels-last video latents (B, F, H, W, C) and explicit RoPE positions, as Kandinsky5T2VPipeline passes."""
    from diffusers import Kandinsky5Transformer3DModel

    _seeded()
    model = Kandinsky5Transformer3DModel(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=12, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2), model_dim=32,
        ff_dim=32, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 6, 6),
    )
    kwargs = {
        "hidden_states": _randn(1, 2, 16, 16, 4), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t(),
        "pooled_projections": _randn(1, 12, seed=102), "visual_rope_pos": [torch.arange(2), torch.arange(8), torch.arange(8)],
        "text_rope_pos": torch.arange(TEXT_LEN),
    }
    return model, kwargs


@builder("Krea2Transformer2DModel")
def krea2():
    """Packed 2x2 latents, per-layer text features (B, T, layers, C) and (0, y, x) position ids after the text."""
    from diffusers import Krea2Transformer2DModel

    _seeded()
    model = Krea2Transformer2DModel(
        in_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
        timestep_embed_dim=16, text_hidden_dim=16, num_text_layers=2, text_num_attention_heads=2, text_num_key_value_heads=2,
        text_intermediate_size=32, num_layerwise_text_blocks=1, num_refiner_text_blocks=1, axes_dims_rope=(4, 6, 6),
    )
    img_ids, txt_ids = flux_ids(8, 8)
    kwargs = {
        "hidden_states": _randn(1, 64, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 2, 16, seed=101),
        "timestep": torch.tensor([0.5]), "position_ids": torch.cat([txt_ids, img_ids]),
    }
    return model, kwargs


@builder("ConsisIDTransformer3DModel")
def consisid():
    """Without the face branch (is_train_face=False): the CogVideoX-style backbone."""
    from diffusers import ConsisIDTransformer3DModel

    _seeded()
    model = ConsisIDTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8, text_embed_dim=16,
        num_layers=2, sample_width=16, sample_height=16, sample_frames=5, patch_size=2, temporal_compression_ratio=4,
        max_text_seq_length=TEXT_LEN,
    )
    kwargs = {"hidden_states": _randn(1, 2, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": _t().long()}
    return model, kwargs


@builder("HunyuanVideo15Transformer3DModel")
def hunyuan_video15():
    from diffusers import HunyuanVideo15Transformer3DModel

    _seeded()
    model = HunyuanVideo15Transformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_refiner_layers=1,
        mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=8, image_embed_dim=12,
        rope_axes_dim=(2, 2, 4), target_size=16, task_type="t2v",
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 1, 8, 8), "timestep": torch.tensor([1.0]), "encoder_hidden_states": _randn(1, 6, 16, seed=101),
        "encoder_hidden_states_2": _randn(1, 4, 8, seed=102), "encoder_attention_mask": torch.ones(1, 6),
        "encoder_attention_mask_2": torch.ones(1, 4), "image_embeds": torch.zeros(1, 3, 12),
    }
    return model, kwargs


@builder("HunyuanVideoFramepackTransformer3DModel")
def hunyuan_framepack():
    """FramePack: the clip to denoise plus clean / 2x / 4x history latents with their frame indices."""
    from diffusers import HunyuanVideoFramepackTransformer3DModel

    _seeded()
    model = HunyuanVideoFramepackTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1, num_single_layers=1,
        num_refiner_layers=1, patch_size=2, patch_size_t=1, guidance_embeds=True, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4), has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True,
    )
    frames, size = 3, 4
    kwargs = {
        "hidden_states": _randn(1, 4, frames, size, size), "timestep": _t(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "pooled_projections": _randn(1, 8, seed=102), "encoder_attention_mask": torch.ones(1, TEXT_LEN), "guidance": _t(),
        "image_embeds": _randn(1, TEXT_LEN, 16, seed=103), "indices_latents": torch.ones(frames),
        "latents_clean": _randn(1, 4, frames - 1, size, size, seed=104), "indices_latents_clean": torch.ones(frames - 1),
        "latents_history_2x": _randn(1, 4, frames - 1, size, size, seed=105), "indices_latents_history_2x": torch.ones(frames - 1),
        "latents_history_4x": _randn(1, 4, (frames - 1) * 4, size, size, seed=106),
        "indices_latents_history_4x": torch.ones((frames - 1) * 4),
    }
    return model, kwargs


@builder("OmniGenTransformer2DModel")
def omnigen():
    """OmniGen: an LLM over prompt token ids with the noisy latent appended (and optional input images)."""
    from diffusers import OmniGenTransformer2DModel

    _seeded()
    model = OmniGenTransformer2DModel(
        hidden_size=16, num_attention_heads=4, num_key_value_heads=4, intermediate_size=32, num_layers=2, pad_token_id=0,
        vocab_size=64, in_channels=4, time_step_dim=4, rope_scaling={"long_factor": [1, 2], "short_factor": [1, 2]},
    )
    text, latent_tokens = 24, 8 * 8 // 4  # the input image latent fills prompt positions [0, 16)
    length = text + 1 + latent_tokens  # prompt, time token, latent patches
    kwargs = {
        "hidden_states": _randn(1, 4, 8, 8), "timestep": torch.tensor([0.5]),
        "input_ids": torch.randint(0, 10, (1, text), generator=torch.Generator().manual_seed(0)),
        "input_img_latents": [_randn(1, 4, 8, 8, seed=101)], "input_image_sizes": {0: [[0, latent_tokens]]},
        "attention_mask": torch.ones(1, length, length), "position_ids": torch.arange(length).unsqueeze(0),
    }
    return model, kwargs


@builder("WanAnimateTransformer3DModel")
def wan_animate():
    """Wan-Animate: noisy + reference latents and a mask (2C + 4 channels), pose latents, face pixels."""
    from diffusers import WanAnimateTransformer3DModel

    _seeded()
    model = WanAnimateTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=12, latent_channels=4, out_channels=4,
        text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2, image_dim=16, rope_max_seq_len=32,
        motion_encoder_channel_sizes={"4": 16, "8": 16, "16": 16}, motion_encoder_size=16, motion_style_dim=8, motion_dim=4,
        motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2, inject_face_latents_blocks=2,
    )
    frames = 4  # (frames + 1) latent frames: one reference frame, then the clip
    kwargs = {
        "hidden_states": _randn(1, 12, frames + 1, 16, 16), "timestep": _t().long(),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "encoder_hidden_states_image": _randn(1, 4, 16, seed=102),
        "pose_hidden_states": _randn(1, 4, frames, 16, 16, seed=103), "face_pixel_values": _randn(1, 3, 4 * frames - 3, 16, 16, seed=104),
    }
    return model, kwargs


@builder("AnyFlowTransformer3DModel")
def anyflow():
    """AnyFlow (a Wan-style flow-map model): latents (B, F, C, H, W), a timestep pair per frame."""
    from diffusers import AnyFlowTransformer3DModel

    _seeded()
    model = AnyFlowTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, rope_max_seq_len=32, gate_value=0.25, deltatime_type="r",
    )
    kwargs = {
        "hidden_states": _randn(1, 2, 4, 16, 16), "timestep": torch.full((1, 2), 500.0), "r_timestep": torch.full((1, 2), 250.0),
        "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
    }
    return model, kwargs


@builder("GlmImageTransformer2DModel")
def glm_image():
    from diffusers import GlmImageTransformer2DModel

    _seeded()
    model = GlmImageTransformer2DModel(
        patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8, num_attention_heads=2, text_embed_dim=16,
        time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64,
    )
    kwargs = {
        "hidden_states": _randn(1, 4, 16, 16), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "prior_token_id": torch.tensor([3]), "prior_token_drop": torch.zeros(1, dtype=torch.bool), "timestep": _t().long(),
        "target_size": torch.tensor([[16.0, 16.0]]), "crop_coords": torch.tensor([[0.0, 0.0]]),
    }
    return model, kwargs


@builder("HeliosTransformer3DModel")
def helios():
    """Helios: the clip plus short / mid / long history latents with their frame indices."""
    from diffusers import HeliosTransformer3DModel

    _seeded()
    model = HeliosTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16,
        freq_dim=32, ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_dim=(4, 4, 4),
        has_multi_term_memory_patch=True, guidance_cross_attn=True, zero_history_timestep=True, is_amplify_history=False,
    )
    f = 2
    kwargs = {
        "hidden_states": _randn(1, 4, f, 16, 16), "timestep": _t().long(), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101),
        "indices_hidden_states": torch.ones(1, f), "indices_latents_history_short": torch.ones(1, f - 1),
        "indices_latents_history_mid": torch.ones(1, f - 1), "indices_latents_history_long": torch.ones(1, (f - 1) * 4),
        "latents_history_short": _randn(1, 4, f - 1, 16, 16, seed=102), "latents_history_mid": _randn(1, 4, f - 1, 16, 16, seed=103),
        "latents_history_long": _randn(1, 4, (f - 1) * 4, 16, 16, seed=104),
    }
    return model, kwargs


@builder("Ideogram4Transformer2DModel")
def ideogram4():
    """Ideogram 4: one packed sequence of LLM features then image tokens, with M-RoPE (t, h, w) position ids
    (image positions offset), segment ids and a per-token indicator of which kind each token is."""
    from diffusers import Ideogram4Transformer2DModel
    from diffusers.models.transformers.transformer_ideogram4 import IMAGE_POSITION_OFFSET, LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR

    _seeded()
    model = Ideogram4Transformer2DModel(
        in_channels=16, num_layers=2, attention_head_dim=8, num_attention_heads=4, intermediate_size=32, adaln_dim=16,
        llm_features_dim=24, rope_theta=10_000, mrope_section=(2, 1, 1),
    )
    text, side = 4, 4
    length = text + side * side
    hidden_states = torch.zeros(1, length, 16)
    hidden_states[:, text:] = _randn(1, side * side, 16)
    features = torch.zeros(1, length, 24)
    features[:, :text] = _randn(1, text, 24, seed=101)
    position_ids = torch.zeros(1, length, 3, dtype=torch.long)
    position_ids[:, :text] = torch.arange(text)[:, None]
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    position_ids[:, text:, 0] = IMAGE_POSITION_OFFSET
    position_ids[:, text:, 1] = ys.flatten() + IMAGE_POSITION_OFFSET
    position_ids[:, text:, 2] = xs.flatten() + IMAGE_POSITION_OFFSET
    indicator = torch.full((1, length), OUTPUT_IMAGE_INDICATOR, dtype=torch.long)
    indicator[:, :text] = LLM_TOKEN_INDICATOR
    kwargs = {
        "hidden_states": hidden_states, "encoder_hidden_states": features, "timestep": torch.tensor([0.5]),
        "position_ids": position_ids, "segment_ids": torch.ones(1, length, dtype=torch.long), "indicator": indicator,
    }
    return model, kwargs


@builder("Kandinsky6Transformer3DModel")
def kandinsky6():
    """Kandinsky 6: channels-last video (B, F, H, W, 2C + 1 with the visual condition channels)."""
    from diffusers import Kandinsky6Transformer3DModel

    _seeded()
    model = Kandinsky6Transformer3DModel(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=8, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2), model_dim=48,
        ff_dim=64, num_text_blocks=1, num_visual_blocks=2, axes_dims=(4, 4, 4), visual_cond=True, in_audio_dim=4, out_audio_dim=4,
    )
    kwargs = {
        "hidden_states": _randn(1, 2, 8, 8, 2 * 4 + 1), "encoder_hidden_states": _randn(1, 6, 8, seed=101),
        "pooled_projections": _randn(1, 8, seed=102), "timestep": torch.tensor([500.0]),
    }
    return model, kwargs


def _joy_image(cls_name: str):
    import diffusers

    _seeded()
    model = getattr(diffusers, cls_name)(
        patch_size=[1, 2, 2], in_channels=16, hidden_size=32, num_attention_heads=2, text_dim=16, num_layers=2,
        rope_dim_list=[4, 6, 6], theta=256,
    )
    kwargs = {"hidden_states": _randn(1, 16, 1, 8, 8), "encoder_hidden_states": _randn(1, TEXT_LEN, 16, seed=101), "timestep": torch.tensor([1.0])}
    return model, kwargs


@builder("JoyImageEditTransformer3DModel")
def joy_image_edit():
    return _joy_image("JoyImageEditTransformer3DModel")


@builder("SanaWMTransformer3DModel")
def sana_wm():
    """SANA-WM (world model): camera poses + intrinsics per frame and Plücker ray maps condition the video."""
    from diffusers import SanaWMTransformer3DModel

    _seeded()
    frames, size = 4, 8
    model = SanaWMTransformer3DModel(
        in_channels=4, num_layers=2, hidden_size=32, num_attention_heads=2, patch_size=(1, 1, 1), softmax_every_n=2,
        linear_head_dim=16, t_kernel_size=3, conv_kernel_size=4, caption_channels=8, mlp_ratio=2.0,
        chunk_plucker_channels=8, chunk_plucker_post_attn_blocks=2,
    )
    c2w = torch.eye(4).repeat(1, frames, 1, 1)
    c2w[..., 2, 3] = torch.arange(frames, dtype=torch.float32) * 0.1  # move forward
    intrinsics = torch.tensor([float(size), float(size), size / 2, size / 2]).expand(1, frames, 4)
    kwargs = {
        "hidden_states": _randn(1, 4, frames, size, size), "timestep": torch.full((1, 1, frames), 500.0),
        "encoder_hidden_states": _randn(1, 1, 16, 8, seed=101), "encoder_attention_mask": torch.ones(1, 16, dtype=torch.long),
        "camera_conditions": torch.cat([c2w.flatten(start_dim=-2), intrinsics], dim=-1),
        "chunk_plucker": _randn(1, 8, frames, size, size, seed=102),
    }
    return model, kwargs
