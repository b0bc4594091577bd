"""Architecture of the demo pipeline: configs of its four parts and its word-level tokenizer.

The sizes are chosen for training on a 2-core CPU in about an hour while keeping what token merging
needs: a U-Net with transformer blocks at its first (highest-resolution) level. The VAE downsamples by 2
only, so a 128-pixel image is a 64 x 64 latent: 4096 tokens at the first attention level, as SD 1.5 has
at 512 pixels.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .shapes import vocabulary

#: Longest tokenized caption (start and end tokens included) the text encoder accepts.
MAX_TOKENS = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: Shared by the training noise schedule and the shipped sampling scheduler. A linear schedule ends at
#: almost pure noise (alpha_bar_T ~ 4e-5), so the flat backgrounds' colour cannot leak through the noise.
#: The U-Net predicts v (velocity), not the noise: a flat image's colours can be read through the noise by
#: averaging until very late in the forward process, so the prompt only decides them at the noisiest
#: steps, where a noise-prediction loss weighs the image's content almost nothing (it weighs it by the
#: signal-to-noise ratio) and the prompt was measured to be ignored; v-prediction weighs it at least 1.
NOISE_SCHEDULE = {
    "num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
    "prediction_type": "v_prediction",
}


def build_tokenizer(words: list[str] | None = None) -> CLIPTokenizer:
    """A CLIP BPE tokenizer whose merges turn every caption word into exactly one token.

    Each word gets a left-to-right chain of merges. Where an earlier word's merge breaks a later word's
    chain (``"d i"`` of "diagonal" fires first in "gradient"), merges joining the pieces BPE leaves are
    appended: BPE takes the lowest-ranked pair present, so merges ranked last change no word that was
    already one token.

    Args:
        words: the vocabulary (default: every word of the textured grammar, :func:`vocabulary`); the
            plain-shapes stages of training use ``vocabulary(textures=False)``.
    """
    words = vocabulary() if words is None else words
    merges: list[str] = []
    symbols: list[str] = [BOS, EOS]
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        symbols += pieces
        merges += _chain(pieces, symbols)
    tokenizer = _write_tokenizer(symbols, merges)
    for word in words:
        pieces = tokenizer.tokenize(word)
        if len(pieces) > 1:
            merges += _chain(pieces, symbols)
            tokenizer = _write_tokenizer(symbols, merges)
    return tokenizer


def _chain(pieces: list[str], symbols: list[str]) -> list[str]:
    """Merges joining ``pieces`` left to right; each merged string is added to ``symbols``."""
    merges, merged = [], pieces[0]
    for piece in pieces[1:]:
        merges.append(f"{merged} {piece}")
        merged += piece
        symbols.append(merged)
    return merges


def _write_tokenizer(symbols: list[str], merges: list[str]) -> CLIPTokenizer:
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = Path(tmp, "vocab.json"), Path(tmp, "merges.txt")
        unique = dict.fromkeys(symbols)  # first occurrence wins, ids stay contiguous
        vocab_file.write_text(json.dumps({s: i for i, s in enumerate(unique)}))
        merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        return CLIPTokenizer(
            str(vocab_file), str(merges_file), model_max_length=MAX_TOKENS,
            bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS,
        )


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """A 2-layer, 64-wide CLIP text transformer over ``tokenizer``'s vocabulary (random weights)."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_TOKENS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    """A two-level KL autoencoder (downsampling factor 2, 4 latent channels, random weights)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=128,
        mid_block_add_attention=False,
    )


def build_unet() -> UNet2DConditionModel:
    """A four-level U-Net with cross-attention transformer blocks at its first two levels (random weights).

    The fourth level (stride 8 in latent pixels) is there for the large shapes: a large shape is 35-48
    latent pixels wide at 128 px, and the three-level version (lowest level at stride 4) drew anything
    wider than ~15 latent pixels as a blob. The transformer blocks carry no position embedding, so their
    attention cannot supply the geometry; only the convolutions' reach can.
    """
    return UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64, 128, 128),
        layers_per_block=1,
        attention_head_dim=(1, 2, 4, 4),
        cross_attention_dim=64,
        norm_num_groups=8,
    )


def build_train_scheduler() -> DDPMScheduler:
    """The noise schedule used in training."""
    return DDPMScheduler(**NOISE_SCHEDULE)


def build_sampling_scheduler() -> DPMSolverMultistepScheduler:
    """The fast multistep solver shipped with the pipeline, on the training noise schedule (with the
    ``steps_offset=1`` diffusers expects of SD pipelines)."""
    return DPMSolverMultistepScheduler(**NOISE_SCHEDULE, steps_offset=1)
