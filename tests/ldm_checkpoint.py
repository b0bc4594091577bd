"""Write a toy SD 1.x pipeline as a single checkpoint in the original (LDM / CompVis) key layout, the
format of community ``.safetensors`` files, so that single-file loading can be tested offline.

Inverse of diffusers' ``convert_ldm_unet_checkpoint`` / ``convert_ldm_vae_checkpoint`` /
``convert_ldm_clip_checkpoint`` for U-Nets whose down and up blocks follow SD 1.x's layout.
"""

from __future__ import annotations

import re
from typing import Any

from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer."
_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"), ("conv2", "out_layers.3"),
           ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _renamed(rest: str, pairs: list[tuple[str, str]]) -> str:
    for new, old in pairs:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    return rest


def unet_key(key: str, layers: int, up_has_attention: list[bool]) -> str:
    """The LDM name of a diffusers U-Net parameter."""
    direct = DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"]
    if key in direct:
        return direct[key]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (layers + 1) + layer + 1
        return f"input_blocks.{index}.0.{_renamed(rest, _RESNET)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{(int(m[1]) + 1) * (layers + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_renamed(m[2], _RESNET)}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        block, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = block * (layers + 1) + layer
        return f"output_blocks.{index}.0.{_renamed(rest, _RESNET)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        block = int(m[1])
        return f"output_blocks.{block * (layers + 1) + layers}.{2 if up_has_attention[block] else 1}.conv.{m[2]}"
    raise KeyError(key)


def vae_key(key: str, num_blocks: int) -> str:
    """The LDM name of a diffusers VAE parameter."""
    direct = DIFFUSERS_TO_LDM_MAPPING["vae"]
    if key in direct:
        return direct[key]
    shortcut = [("conv_shortcut", "nin_shortcut")]
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{_renamed(m[3], shortcut)}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.block.{m[2]}.{_renamed(m[3], shortcut)}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_blocks - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_renamed(m[3], shortcut)}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_renamed(m[2], _VAE_ATTENTION)}"
    raise KeyError(key)


def ldm_state_dict(pipe: Any) -> dict[str, Any]:
    """Every weight of an SD 1.x pipeline (U-Net, VAE, CLIP text encoder) under its LDM name."""
    config = pipe.unet.config
    up_has_attention = ["CrossAttn" in name for name in config.up_block_types]
    state = {UNET_PREFIX + unet_key(k, config.layers_per_block, up_has_attention): v.contiguous()
             for k, v in pipe.unet.state_dict().items()}
    num_blocks = len(pipe.vae.config.down_block_types)
    state.update({VAE_PREFIX + vae_key(k, num_blocks): v.contiguous() for k, v in pipe.vae.state_dict().items()})
    # Original checkpoints name CLIP weights "text_model.*"; transformers 5 drops that prefix in state_dict().
    state.update({CLIP_PREFIX + ("" if k.startswith("text_model.") else "text_model.") + k: v.contiguous()
                  for k, v in pipe.text_encoder.state_dict().items()})
    return state
