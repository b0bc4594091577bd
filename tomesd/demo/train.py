"""Train the demo text-to-image pipeline from scratch on the procedural shapes set, and ship it: the engine of
``tomesd train-demo`` (and ``scripts/train_demo.py``).

Six stages, each resumable from its last checkpoint in ``--work``; the first three learn plain shapes
(the caption grammar without texture words), the last three continue on the textured set:

1. ``vae``: the autoencoder learns to reconstruct 64-pixel shape images (MSE + a small KL term); its
   latent scaling factor is then set so that latents have unit standard deviation;
2. ``unet``: the U-Net and the text encoder learn to denoise 32 x 32 latents (64-pixel images) of the
   posterior means, predicting v, with 10 % empty captions for classifier-free guidance and an EMA copy of
   the weights;
3. ``finetune``: the same at the shipped default size, 64 x 64 latents (128-pixel images);
4. ``texture-vae``: the autoencoder continues on textured images (the plain-shapes one turns stripes into
   blurs), and its scaling factor is set again;
5. ``texture-unet``: the denoiser continues at 64 pixels on the textured set, with the texture words
   added to the tokenizer (the known words keep their trained embeddings);
6. ``texture-finetune``: the same at 128 pixels.

The texture stages start from the stages before them, or, when those are not run, from the pipeline in
``--init-from`` (e.g. the plain-shapes model of an earlier release).

The EMA weights are written to ``--out`` (default: the shipped ``tomesd/demo_model``) after every
denoiser stage as a standard diffusers folder (safetensors). Every batch is drawn from a generator seeded by
(seed, stage, step), so a run is reproducible and a resumed run continues exactly where it stopped.

The learning rate warms up over 100 steps, stays at its peak until ``--unet-anneal-start`` (finetune:
``--finetune-anneal-start``), then follows a cosine down to a tenth of the peak at the stage's last step.

Measured on this machine (2 CPU cores, torch 2.14.1) for the shipped weights, which the first three stages' defaults
give: vae 1800 steps ~9 min (1 thread, shared machine); unet 16000 steps: the first 9000 (constant rate) in
76 min (1 thread, 1.96 steps/s, while another job held the other core; three resumed parts), the annealed
7000 in 36 min (2 threads, quiet machine, ~3.2 steps/s); finetune 2000 steps of batch 4, 36 min (2 threads,
quiet machine, ~0.93 steps/s). On a shared machine use ``--threads 1``. The texture stages' cost, measured
with 1 thread on a loaded machine before their run: ~1.1 s per texture-vae step, ~1.4 s per texture-unet
step (batch 8, 64 px) and ~3.1 s per texture-finetune step (batch 4, 128 px): about 80 min in all, when the
machine gives the job a core.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tomesd.demo import model as arch
from tomesd.demo.shapes import draw, random_scene, vocabulary

STAGES = ("vae", "unet", "finetune", "texture-vae", "texture-unet", "texture-finetune")
TEXTURE_STAGES = STAGES[3:]

__all__ = ["STAGES", "TEXTURE_STAGES", "Checkpoints", "Denoiser", "batch_images", "export", "learning_rate",
           "reconstruction_psnr", "run_training", "step_generator", "train_denoiser", "train_vae"]


def batch_images(seed: int, stage: str, step: int, count: int, size: int) -> tuple[torch.Tensor, list[str]]:
    """``count`` training images in [-1, 1] (B, 3, size, size) and their captions, fixed by the arguments
    (textured scenes in the texture stages)."""
    rng = random.Random(f"{seed}/{stage}/{step}")
    textures = stage.startswith("texture")
    scenes = [random_scene(rng, "train", textures=textures) for _ in range(count)]
    pixels = np.stack([np.asarray(draw(s, size, rng)) for s in scenes])  # (B, H, W, 3)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1  # (B, 3, H, W)
    return images, [s.caption for s in scenes]


def learning_rate(step: int, steps: int, peak: float, anneal_start: int, warmup: int = 100) -> float:
    """Linear warm-up over ``warmup`` steps, ``peak`` until ``anneal_start``, then a cosine to ``peak / 10``
    at the last step."""
    rate = peak * min(1.0, (step + 1) / warmup)
    if step < anneal_start:
        return rate
    progress = (step - anneal_start) / max(1, steps - 1 - anneal_start)  # 0 at anneal_start, 1 at the last step
    return rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The torch generator of one step's noise, fixed by the arguments (a stable hash, not ``hash``)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{stage}/{step}".encode()))


class Checkpoints:
    """Save and resume the state of one stage under ``work/<stage>.pt``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)

    def load(self, stage: str) -> dict | None:
        path = self.work / f"{stage}.pt"
        return torch.load(path, weights_only=False) if path.exists() else None

    def save(self, stage: str, state: dict) -> None:
        tmp = self.work / f"{stage}.pt.tmp"
        torch.save(state, tmp)
        tmp.replace(self.work / f"{stage}.pt")


def train_vae(args: argparse.Namespace, stage: str, ckpt: Checkpoints, log: list,
              start_from: torch.nn.Module | None = None) -> torch.nn.Module:
    """Stages 1 and 4: fit the autoencoder (from ``start_from``'s weights, if given), then set its
    ``scaling_factor`` for unit-variance latents."""
    vae = arch.build_vae()
    if start_from is not None:
        vae.load_state_dict(start_from.state_dict())
    steps, lr = (args.vae_steps, 1e-3) if stage == "vae" else (args.texture_vae_steps, 3e-4)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    start = _resume(ckpt.load(stage), {"vae": vae, "opt": opt})
    for step in tqdm(range(start, steps), desc=stage, initial=start, total=steps):
        images, _ = batch_images(args.seed, stage, step, args.batch, 64)
        posterior = vae.encode(images).latent_dist
        latents = posterior.sample(generator=step_generator(args.seed, stage, step))
        recon = vae.decode(latents).sample
        mse = F.mse_loss(recon, images)
        loss = mse + 1e-5 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.append({"stage": stage, "step": step, "loss": loss.item(), "mse": mse.item()})
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == steps:
            ckpt.save(stage, {"step": step + 1, "vae": vae.state_dict(), "opt": opt.state_dict()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        images, _ = batch_images(args.seed, f"{stage}-scale", 0, 64, 64)
        std = vae.encode(images).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=1.0 / std)
    if start_from is not None:
        for size in (64, 128):
            before, after = (reconstruction_psnr(v, args.seed, stage, size) for v in (start_from, vae))
            print(f"{stage}: reconstruction PSNR at {size} px {before:.1f} dB before, {after:.1f} dB after")
    return vae


@torch.no_grad()
def reconstruction_psnr(vae, seed: int, stage: str, size: int, count: int = 16) -> float:
    """PSNR (dB, images in [-1, 1]) of ``vae``'s reconstructions of ``count`` fixed images of ``stage``'s
    data, drawn apart from its training batches."""
    images, _ = batch_images(seed, f"{stage}-check", size, count, size)
    latents = vae.encode(images).latent_dist.mode()
    return 10 * math.log10(4 / F.mse_loss(vae.decode(latents).sample.clamp(-1, 1), images).item())


def _resume(state: dict | None, parts: dict) -> int:
    """Load ``parts`` (name -> module or optimizer) from a checkpoint; return the step to start from."""
    if state is None:
        return 0
    for name, part in parts.items():
        part.load_state_dict(state[name])
    return state["step"]


class Denoiser:
    """The trainable pair (text encoder, U-Net), its optimizer and the EMA copy that is shipped."""

    def __init__(self, tokenizer, lr: float) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = arch.build_text_encoder(tokenizer)
        self.unet = arch.build_unet()
        params = list(self.text_encoder.parameters()) + list(self.unet.parameters())
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
        self.ema_text_encoder = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_updates = 0

    def parts(self) -> dict:
        return {"text_encoder": self.text_encoder, "unet": self.unet, "opt": self.opt,
                "ema_text_encoder": self.ema_text_encoder, "ema_unet": self.ema_unet}

    def state(self, step: int) -> dict:
        return {"step": step, "ema_updates": self.ema_updates, **{k: v.state_dict() for k, v in self.parts().items()}}

    def load(self, state: dict | None) -> int:
        if state is not None:
            self.ema_updates = state["ema_updates"]
        return _resume(state, self.parts())

    def start_from(self, text_encoder: torch.nn.Module, unet: torch.nn.Module, tokenizer) -> None:
        """Take the weights of a trained pair whose tokenizer is ``tokenizer``: every token both tokenizers
        know keeps its embedding; new tokens (the texture words) start at the mean known embedding plus
        this encoder's own small random initialisation."""
        self.unet.load_state_dict(unet.state_dict())
        old = text_encoder.get_input_embeddings().weight.detach()  # (V_old, 64)
        new = self.text_encoder.get_input_embeddings().weight.detach().clone()  # (V_new, 64)
        old_vocab = tokenizer.get_vocab()
        for token, index in self.tokenizer.get_vocab().items():
            new[index] = old[old_vocab[token]] if token in old_vocab else old.mean(0) + new[index]
        rest = {k: v for k, v in text_encoder.state_dict().items() if not k.endswith("token_embedding.weight")}
        missing, unexpected = self.text_encoder.load_state_dict(rest, strict=False)
        if unexpected or [k for k in missing if not k.endswith("token_embedding.weight")]:
            raise RuntimeError(f"text encoders differ beyond the vocabulary: missing {missing}, unexpected {unexpected}")
        with torch.no_grad():
            self.text_encoder.get_input_embeddings().weight.copy_(new)
        self.ema_text_encoder.load_state_dict(self.text_encoder.state_dict())
        self.ema_unet.load_state_dict(self.unet.state_dict())

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=arch.MAX_TOKENS, truncation=True,
                             return_tensors="pt").input_ids  # (B, T)
        return self.text_encoder(ids)[0]  # (B, T, 64)

    @torch.no_grad()
    def update_ema(self, max_decay: float = 0.999) -> None:
        self.ema_updates += 1
        decay = min(max_decay, (1 + self.ema_updates) / (10 + self.ema_updates))
        for ema, live in ((self.ema_text_encoder, self.text_encoder), (self.ema_unet, self.unet)):
            for e, p in zip(ema.parameters(), live.parameters()):
                e.lerp_(p, 1 - decay)


def train_denoiser(args, stage: str, denoiser: Denoiser, vae, ckpt: Checkpoints, log: list) -> None:
    """Stages 2, 3, 5 and 6: v-prediction loss on VAE latents, 10 % of captions dropped to ''."""
    steps, batch, size, anneal_start, peak = {
        "unet": (args.unet_steps, args.batch, 64, args.unet_anneal_start, args.lr),
        "finetune": (args.finetune_steps, args.finetune_batch, 128, args.finetune_anneal_start, args.lr * 0.3),
        "texture-unet": (args.texture_unet_steps, args.batch, 64, args.texture_unet_steps // 2, args.texture_lr),
        "texture-finetune": (args.texture_finetune_steps, args.finetune_batch, 128, 0, args.texture_lr * 0.3),
    }[stage]
    noise_schedule = arch.build_train_scheduler()
    start = denoiser.load(ckpt.load(stage))
    bar = tqdm(range(start, steps), desc=stage, initial=start, total=steps)
    for step in bar:
        for group in denoiser.opt.param_groups:
            group["lr"] = learning_rate(step, steps, peak, anneal_start)
        gen = step_generator(args.seed, stage, step)
        images, captions = batch_images(args.seed, stage, step, batch, size)
        captions = ["" if random.Random(f"{args.seed}/{stage}/{step}/{i}").random() < 0.1 else c
                    for i, c in enumerate(captions)]
        with torch.no_grad():
            # The posterior mean, not a sample: the posterior's own noise (std ~0.9 against a signal std of
            # ~0.5) would otherwise be what the U-Net learns to generate.
            latents = vae.encode(images).latent_dist.mode() * vae.config.scaling_factor  # (B, 4, h, w)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, noise_schedule.config.num_train_timesteps, (batch,), generator=gen)
        noisy = noise_schedule.add_noise(latents, noise, t)
        pred = denoiser.unet(noisy, t, denoiser.encode_text(captions)).sample
        loss = F.mse_loss(pred, noise_schedule.get_velocity(latents, noise, t))
        denoiser.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.unet.parameters(), 1.0)
        denoiser.opt.step()
        denoiser.update_ema()
        log.append({"stage": stage, "step": step, "loss": loss.item()})
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == steps:
            ckpt.save(stage, denoiser.state(step + 1))


def export(out: Path, vae, denoiser: Denoiser) -> None:
    """Write the EMA weights as a StableDiffusionPipeline folder (safetensors), without a safety checker."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=denoiser.ema_text_encoder, tokenizer=denoiser.tokenizer, unet=denoiser.ema_unet,
        scheduler=arch.build_sampling_scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"wrote {out} ({size / 2**20:.1f} MiB)")


def run_plain_stages(args, ckpt: Checkpoints, log: list) -> tuple[torch.nn.Module, Denoiser]:
    """Stages 1-3 (each as far as ``args.stages`` asks; the VAE is always resumed or trained)."""
    vae = train_vae(args, "vae", ckpt, log)
    denoiser = Denoiser(arch.build_tokenizer(vocabulary(textures=False)), args.lr)
    for stage, before in (("unet", None), ("finetune", "unet")):
        if stage in args.stages:
            _continue_from(ckpt, stage, before, denoiser)
            train_denoiser(args, stage, denoiser, vae, ckpt, log)
            export(args.out, vae, denoiser)
    return vae, denoiser


def run_texture_stages(args, ckpt: Checkpoints, log: list, vae, denoiser: Denoiser | None) -> None:
    """Stages 4-6, from the plain stages' ``vae`` / ``denoiser`` or, when None, from ``args.init_from``."""
    if vae is None or denoiser is None:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(args.init_from, use_safetensors=True, local_files_only=True,
                                                       safety_checker=None, requires_safety_checker=False)
        vae, denoiser = pipe.vae, Denoiser(pipe.tokenizer, args.lr)
        denoiser.text_encoder, denoiser.unet = pipe.text_encoder, pipe.unet
    vae = train_vae(args, "texture-vae", ckpt, log, start_from=vae) if "texture-vae" in args.stages else vae
    textured = Denoiser(arch.build_tokenizer(), args.texture_lr)
    textured.start_from(denoiser.ema_text_encoder if denoiser.ema_updates else denoiser.text_encoder,
                        denoiser.ema_unet if denoiser.ema_updates else denoiser.unet, denoiser.tokenizer)
    for stage, before in (("texture-unet", None), ("texture-finetune", "texture-unet")):
        if stage in args.stages:
            _continue_from(ckpt, stage, before, textured)
            train_denoiser(args, stage, textured, vae, ckpt, log)
            export(args.out, vae, textured)


def _continue_from(ckpt: Checkpoints, stage: str, before: str | None, denoiser: Denoiser) -> None:
    """Resume ``stage`` from its checkpoint, or start it from the end of stage ``before``."""
    if ckpt.load(stage) is None and before is not None and ckpt.load(before) is not None:
        denoiser.load({**ckpt.load(before), "step": 0})


def run_training(args: argparse.Namespace) -> None:
    """Run ``args.stages`` (the parsed ``tomesd train-demo`` command line), resuming each from ``args.work``;
    writes the pipeline to ``args.out`` after every denoiser stage and a JSON log of the run to ``args.work``."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    ckpt = Checkpoints(args.work)
    log: list[dict] = []
    started = time.perf_counter()
    vae = denoiser = None
    if set(args.stages) - set(TEXTURE_STAGES):
        vae, denoiser = run_plain_stages(args, ckpt, log)
    if set(args.stages) & set(TEXTURE_STAGES):
        run_texture_stages(args, ckpt, log, vae, denoiser)
    elapsed = time.perf_counter() - started
    with open(args.work / f"log_{int(time.time())}.json", "w") as f:
        json.dump({"args": {k: str(v) for k, v in vars(args).items()}, "seconds": elapsed, "log": log}, f)
    print(f"done in {elapsed / 60:.1f} min")

