"""The demo model's motion module: an AnimateDiff motion adapter trained on moving-shape clips.

AnimateDiff turns an image U-Net into a video one by inserting *motion modules* (transformers over the
frames at every place of the grid) and training only them. This module does the same for the demo model:
:func:`build_motion_adapter` sizes a ``MotionAdapter`` to the demo U-Net, :func:`train_motion` trains it on
:mod:`tomesd.demo.clips` (the image model, VAE and text encoder frozen) and :func:`load_video_pipeline`
builds the ``AnimateDiffPipeline``. It exists so that what merging does to a video model's *motion*
(``merge_temporal``, ``share_frames``) can be measured on trained motion modules: no real AnimateDiff
weights can be had here (``tomesd evaluate-motion``).

Training is resumable (``--work``), every batch fixed by (seed, step); the trained adapter is written as a
diffusers folder (``MotionAdapter.from_pretrained`` reads it), shipped as :data:`MOTION_ADAPTER_DIR`.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import DEMO_MODEL_DIR, load_pipeline
from .clips import draw_clip, random_clip
from .model import MAX_TOKENS, build_train_scheduler
from .train import Checkpoints, learning_rate, step_generator

__all__ = ["CLIP_FRAMES", "CLIP_SIZE", "MAX_FRAMES", "MOTION_ADAPTER_DIR", "batch_clips", "build_motion_adapter",
           "check_clip_shape", "load_video_pipeline", "motion_parameters", "train_motion"]

#: The shipped adapter (``config.json`` + safetensors), trained by ``tomesd train-demo-motion``.
MOTION_ADAPTER_DIR = DEMO_MODEL_DIR.with_name("demo_motion_adapter")
#: Frames per clip and image side the adapter is trained and evaluated at (a 32 x 32 latent: 1024 places at the
#: first level, the demo's smallest size at which the default ``min_tokens`` merges).
CLIP_FRAMES, CLIP_SIZE = 8, 64
#: Most frames a clip can have: the length of the adapter's table of frame positions.
MAX_FRAMES = 32
STAGE = "motion"


def check_clip_shape(frames: int, size: int) -> None:
    """Refuse clips the adapter cannot take or the VAE cannot encode.

    Raises:
        ValueError: ``frames`` is not 2 to :data:`MAX_FRAMES`, or ``size`` is not a positive multiple of 8.
    """
    if not 2 <= frames <= MAX_FRAMES:
        raise ValueError(f"frames={frames}: the adapter takes 2 to {MAX_FRAMES} frames")
    if size <= 0 or size % 8:
        raise ValueError(f"size={size} must be a positive multiple of 8")


def build_motion_adapter(seed: int = 0) -> Any:
    """A ``MotionAdapter`` matching the demo U-Net's widths (32, 64, 128, 128; one layer per block, a mid
    block), 4 heads, whose modules start as the identity: each output projection is zeroed, so the video
    model draws every frame as the image model would until training moves them."""
    from diffusers import MotionAdapter

    torch.manual_seed(seed)
    adapter = MotionAdapter(block_out_channels=(32, 64, 128, 128), motion_layers_per_block=1,
                            motion_num_attention_heads=4, motion_norm_num_groups=8, motion_max_seq_length=MAX_FRAMES)
    for name, module in adapter.named_modules():
        if name.endswith("proj_out"):
            torch.nn.init.zeros_(module.weight)
            torch.nn.init.zeros_(module.bias)
    return adapter


def batch_clips(seed: int, step: int, count: int, frames: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` training clips in [-1, 1] (B, frames, 3, size, size) and their captions, fixed by the
    arguments."""
    rng = random.Random(f"{seed}/{STAGE}/{step}")
    clips = [random_clip(rng, "train") for _ in range(count)]
    pixels = np.stack([np.stack([np.asarray(f) for f in draw_clip(c, size, frames)]) for c in clips])  # (B, F, H, W, 3)
    return torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).float() / 127.5 - 1, [c.caption for c in clips]


def motion_parameters(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The motion modules' entries of a ``UNetMotionModel``'s state dict (what training changes)."""
    return {k: v for k, v in unet.state_dict().items() if ".motion_modules." in k}


class MotionTrainer:
    """The video U-Net built from the demo pipeline and a fresh adapter, only its motion modules trainable."""

    def __init__(self, args: argparse.Namespace) -> None:
        from diffusers import UNetMotionModel

        self.args = args
        self.pipe = load_pipeline(folder=args.init_from)
        self.unet = UNetMotionModel.from_unet2d(self.pipe.unet, build_motion_adapter(args.seed))
        self.unet.freeze_unet2d_params()
        self.trainable = [p for p in self.unet.parameters() if p.requires_grad]  # the motion modules'
        self.opt = torch.optim.AdamW(self.trainable, lr=args.lr, weight_decay=1e-2)
        self.noise_schedule = build_train_scheduler()

    def state(self, step: int) -> dict:
        return {"step": step, "motion": motion_parameters(self.unet), "opt": self.opt.state_dict()}

    def load(self, state: dict | None) -> int:
        if state is None:
            return 0
        missing, unexpected = self.unet.load_state_dict(state["motion"], strict=False)
        if unexpected or any(".motion_modules." in k for k in missing):
            raise ValueError(f"{self.args.work} holds another adapter's checkpoint; start in an empty --work")
        self.opt.load_state_dict(state["opt"])
        return state["step"]

    @torch.no_grad()
    def encode(self, clips: torch.Tensor, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Latents (B, 4, F, h, w) of ``clips`` (the posterior means, as the image model was trained on) and
        the text per frame (B * F, T, C), as AnimateDiffPipeline hands it to the U-Net."""
        batch, frames = clips.shape[:2]
        vae = self.pipe.vae
        latents = vae.encode(clips.flatten(0, 1)).latent_dist.mode() * vae.config.scaling_factor  # (B * F, 4, h, w)
        ids = self.pipe.tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                  return_tensors="pt").input_ids  # (B, T)
        text = self.pipe.text_encoder(ids)[0].repeat_interleave(frames, dim=0)  # (B * F, T, C)
        return latents.unflatten(0, (batch, frames)).transpose(1, 2), text

    def step(self, step: int) -> float:
        """One optimisation step on batch ``step``: v-prediction loss, one noise level per clip, 10 % of
        captions dropped to '' (for classifier-free guidance, as the image model)."""
        args = self.args
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(step, args.steps, args.lr, args.steps // 2)
        clips, captions = batch_clips(args.seed, step, args.batch, args.frames, args.size)
        captions = ["" if random.Random(f"{args.seed}/{STAGE}/{step}/{i}").random() < 0.1 else c
                    for i, c in enumerate(captions)]
        latents, text = self.encode(clips, captions)
        gen = step_generator(args.seed, STAGE, step)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, self.noise_schedule.config.num_train_timesteps, (args.batch,), generator=gen)
        noisy = self.noise_schedule.add_noise(latents, noise, t)
        pred = self.unet(noisy, t, text).sample
        loss = F.mse_loss(pred, self.noise_schedule.get_velocity(latents, noise, t))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, 1.0)
        self.opt.step()
        return loss.item()


def train_motion(args: argparse.Namespace) -> Path:
    """Train (or resume) the demo motion adapter as ``args`` (the parsed ``tomesd train-demo-motion``) say,
    write it to ``args.out`` and a JSON log of the run to ``args.work``; returns ``args.out``."""
    torch.set_num_threads(args.threads)
    trainer = MotionTrainer(args)
    ckpt = Checkpoints(args.work)
    start = trainer.load(ckpt.load(STAGE))
    started, log = time.perf_counter(), []
    bar = tqdm(range(start, args.steps), desc=STAGE, initial=start, total=args.steps)
    for step in bar:
        loss = trainer.step(step)
        log.append({"step": step, "loss": loss})
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            ckpt.save(STAGE, trainer.state(step + 1))
    trainer.unet.save_motion_modules(str(args.out))
    elapsed = time.perf_counter() - started
    with open(args.work / f"motion_log_{int(time.time())}.json", "w") as handle:
        json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "seconds": elapsed, "log": log}, handle)
    print(f"wrote {args.out}; {len(log)} steps in {elapsed / 60:.1f} min")
    return Path(args.out)


def load_video_pipeline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        adapter: str | Path | None = None, folder: str | Path | None = None) -> Any:
    """The demo model with its motion adapter as an ``AnimateDiffPipeline``, offline; draw clips with
    ``pipe(prompt, num_frames=CLIP_FRAMES, height=CLIP_SIZE, width=CLIP_SIZE)``.

    Args:
        device, dtype: as :func:`tomesd.demo.load_pipeline`.
        adapter: a folder written by ``tomesd train-demo-motion --out`` (default: :data:`MOTION_ADAPTER_DIR`).
        folder: the image model (default: the shipped plain demo model).

    Raises:
        FileNotFoundError: the adapter is missing (train it with ``tomesd train-demo-motion``).
    """
    from diffusers import AnimateDiffPipeline, MotionAdapter

    adapter = MOTION_ADAPTER_DIR if adapter is None else Path(adapter)
    if not (adapter / "config.json").is_file():
        raise FileNotFoundError(f"the demo motion adapter is missing from {adapter}; train it with "
                                "`tomesd train-demo-motion`")
    image = load_pipeline(dtype=dtype, folder=folder)
    motion = MotionAdapter.from_pretrained(adapter, torch_dtype=dtype, use_safetensors=True, local_files_only=True)
    pipe = AnimateDiffPipeline(vae=image.vae, text_encoder=image.text_encoder, tokenizer=image.tokenizer,
                               unet=image.unet, motion_adapter=motion, scheduler=image.scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch.device(device))

