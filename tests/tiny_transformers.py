"""Tiny random-weight transformers vision encoders, one per class the transformers family patches.

Built offline from configs with a fixed seed: 32 px images in 8 px patches (16 patch tokens), videos of
8 frames × 32 px in 2-frame tubelets (4 frames × 16 patches = 64 tokens), 4 layers of width 32.
"""

from __future__ import annotations

import torch

WIDTH = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, intermediate_size=64)
IMAGE = dict(image_size=32, patch_size=8)
VIDEO_FRAMES = 8

# name -> (model class, config class, config kwargs, input kind)
MODELS = {
    "vit": ("ViTModel", "ViTConfig", {}, "image"),
    "vit_classifier": ("ViTForImageClassification", "ViTConfig", {"num_labels": 10}, "image"),
    "deit": ("DeiTModel", "DeiTConfig", {}, "image"),
    "deit_teacher": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", {"num_labels": 10}, "image"),
    "dinov2": ("Dinov2Model", "Dinov2Config", {"layerscale_value": 0.5}, "image"),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", {"num_register_tokens": 4}, "image"),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", {}, "image"),
    "clip_projection": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", {"projection_dim": 16}, "image"),
    "clip": ("CLIPModel", "CLIPConfig", {}, "image"),
    "siglip_vision": ("SiglipVisionModel", "SiglipVisionConfig", {}, "image"),
    "siglip": ("SiglipModel", "SiglipConfig", {}, "image"),
    "videomae": ("VideoMAEModel", "VideoMAEConfig", {"num_frames": VIDEO_FRAMES, "tubelet_size": 2}, "video"),
    "videomae_classifier": ("VideoMAEForVideoClassification", "VideoMAEConfig",
                            {"num_frames": VIDEO_FRAMES, "tubelet_size": 2, "num_labels": 10}, "video"),
    "vivit": ("VivitModel", "VivitConfig", {"num_frames": VIDEO_FRAMES, "tubelet_size": [2, 8, 8]}, "video"),
    "vivit_classifier": ("VivitForVideoClassification", "VivitConfig",
                         {"num_frames": VIDEO_FRAMES, "tubelet_size": [2, 8, 8], "num_labels": 10}, "video"),
}
# leading class / distillation / register tokens of each
PREFIX = {"vit": 1, "vit_classifier": 1, "deit": 2, "deit_teacher": 2, "dinov2": 1, "dinov2_registers": 5,
          "clip_vision": 1, "clip_projection": 1, "clip": 1, "siglip_vision": 0, "siglip": 0, "videomae": 0,
          "videomae_classifier": 0, "vivit": 1, "vivit_classifier": 1}
PATCH_TOKENS = {"image": 16, "video": 64}


def config(name: str, attn_implementation: str = "sdpa", **extra):
    """The tiny config of ``name`` (see :data:`MODELS`)."""
    import transformers

    _, config_class, kwargs, _ = MODELS[name]
    config_class = getattr(transformers, config_class)
    if config_class.__name__ in ("CLIPConfig", "SiglipConfig"):
        text = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                    max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
        vision = {**WIDTH, **IMAGE, **extra}
        return config_class(text_config=text, vision_config=vision, projection_dim=16,
                            attn_implementation=attn_implementation) if config_class.__name__ == "CLIPConfig" else \
            config_class(text_config=text, vision_config=vision, attn_implementation=attn_implementation)
    image = dict(image_size=32) if config_class.__name__ == "VivitConfig" else IMAGE
    return config_class(**WIDTH, **image, **kwargs, **extra, attn_implementation=attn_implementation)


def build(name: str, attn_implementation: str = "sdpa", seed: int = 0, **extra) -> torch.nn.Module:
    """A tiny random-weight ``name`` model in eval mode, seeded."""
    import transformers

    torch.manual_seed(seed)
    model_class = getattr(transformers, MODELS[name][0])
    return model_class(config(name, attn_implementation, **extra)).eval()


def inputs(name: str, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Random pixel values for ``name``: (B, 3, 32, 32) images or (B, 8, 3, 32, 32) videos."""
    generator = torch.Generator().manual_seed(seed)
    if MODELS[name][3] == "video":
        return torch.randn(batch, VIDEO_FRAMES, 3, 32, 32, generator=generator)
    return torch.randn(batch, 3, 32, 32, generator=generator)


def num_tokens(name: str) -> int:
    """Tokens entering the first layer of ``name``."""
    return PREFIX[name] + PATCH_TOKENS[MODELS[name][3]]


def run(model: torch.nn.Module, name: str, pixels: torch.Tensor, **kwargs):
    """One forward of ``model`` on ``pixels``; CLIP / SigLIP pairs get a short caption per image."""
    if MODELS[name][0] in ("CLIPModel", "SiglipModel"):
        ids = torch.arange(6).repeat(pixels.shape[0], 1)
        return model(input_ids=ids, pixel_values=pixels, **kwargs)
    return model(pixel_values=pixels, **kwargs)


def main_output(name: str, output) -> torch.Tensor:
    """The tensor a user reads from each model: logits, image embeddings or the last hidden state."""
    if hasattr(output, "logits_per_image"):
        return output.image_embeds
    if getattr(output, "logits", None) is not None:
        return output.logits
    if getattr(output, "image_embeds", None) is not None:
        return output.image_embeds
    return output.last_hidden_state
