"""Loading the diffusion pipelines the app and the scripts work on, safely and in one place.

A *model source* is one of:

* ``"demo"`` (or ``None``): the embedded demo model, works offline (:func:`tomesd.demo.load_pipeline`);
* ``"demo-textured"``: the shipped textured demo model (stripes, checks, dots; ``tomesd.demo.TEXTURED_MODEL_DIR``);
* ``"demo-motion"``: the demo model with its trained motion adapter, an AnimateDiff pipeline drawing 8-frame
  clips of moving shapes (``tomesd.demo.motion``);
* a local folder in diffusers format (``model_index.json`` inside), e.g. written by ``save_pretrained``;
* a single ``.safetensors`` checkpoint in the original Stable Diffusion layout (SD 1.x/2.x/XL); it holds
  weights only, the configs and tokenizer come from ``config=`` or its base model (hub or local cache);
* a Hugging Face model id such as ``"stable-diffusion-v1-5/stable-diffusion-v1-5"`` (needs the hub or its cache).

Weights are read from safetensors only (no pickle), and remote code is never trusted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

from tomesd.lab.timing import DENOISERS

__all__ = [
    "ATTENTION", "DEMO", "DEMO_MOTION", "DEMO_TEXTURED", "DEVICE_TYPES", "DTYPES", "OFFLOAD", "check_placement",
    "check_source", "default_settings", "load_pipeline", "parse_device", "parse_dtype", "pipeline_class_name",
]

DEMO = "demo"
DEMO_TEXTURED = "demo-textured"
DEMO_MOTION = "demo-motion"
# How the pipeline's weights are placed: all on ``device``, or kept on the CPU and moved to the GPU per model
# (diffusers' enable_model_cpu_offload) or per layer (enable_sequential_cpu_offload: least memory, slowest).
OFFLOAD = ("none", "model", "sequential")
# Attention implementation of the U-Net's attention layers: PyTorch's fused scaled_dot_product_attention
# (diffusers' default), the explicit softmax(QK^T)V ("classic", diffusers' AttnProcessor) or xFormers (GPU).
ATTENTION = ("sdpa", "classic", "xformers")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Device types a pipeline can run on here, each with how to know whether this machine has one.
DEVICE_TYPES = {
    "cpu": lambda: True,
    "cuda": lambda: torch.cuda.is_available(),
    "mps": lambda: torch.backends.mps.is_available(),
    "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available(),
}
_MODEL_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# Usual Stable Diffusion settings for user models; the demo model brings its own.
USER_MODEL_DEFAULTS = {"size": 512, "steps": 25, "guidance": 7.5, "prompts": ["a photo of an astronaut riding a horse"]}
# Usual settings of pipeline classes that differ from those (the size is the side of a square image).
CLASS_DEFAULTS: dict[str, dict[str, Any]] = {
    "StableDiffusionXLPipeline": {"size": 1024, "steps": 30, "guidance": 5.0},
    "FluxPipeline": {"size": 1024, "steps": 28, "guidance": 3.5},
    "StableDiffusion3Pipeline": {"size": 1024, "steps": 28, "guidance": 7.0},
    "PixArtSigmaPipeline": {"size": 1024, "steps": 20, "guidance": 4.5},
    "SanaPipeline": {"size": 1024, "steps": 20, "guidance": 4.5},
    "WanPipeline": {"size": 480, "steps": 30, "guidance": 5.0},
}
# Architectures of single-file checkpoints (as diffusers' ``infer_diffusers_model_type`` names them) that load
# as a text-to-image pipeline with a U-Net, and that pipeline's class.
_SINGLE_FILE_PIPELINES = {
    "v1": "StableDiffusionPipeline",
    "v2": "StableDiffusionPipeline",
    "xl_base": "StableDiffusionXLPipeline",
    "playground-v2-5": "StableDiffusionXLPipeline",
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype named ``name`` ("float32", "float16", "bfloat16"), or ``name`` itself if a dtype.

    Raises:
        ValueError: the name is not one of those.
    """
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; accepted: {', '.join(DTYPES)}")
    return DTYPES[name]


def pipeline_class_name(source: str | Path | None) -> str | None:
    """The pipeline class a diffusers folder declares (``model_index.json``'s ``_class_name``), read without
    loading anything; None for the demo model, a single file, a model id or an unreadable index."""
    if source is None or str(source).strip() in ("", DEMO):
        return None
    index = Path(str(source).strip()).expanduser() / "model_index.json"
    try:
        name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def is_demo_folder(source: str | Path) -> bool:
    """Whether ``source`` is the path of a shipped demo pipeline folder (the plain or the textured one), or
    :data:`DEMO_TEXTURED`."""
    from tomesd import demo

    if str(source).strip() == DEMO_TEXTURED:
        return True
    path = Path(str(source).strip()).expanduser()
    return path.is_dir() and path.resolve() in (demo.DEMO_MODEL_DIR.resolve(), demo.TEXTURED_MODEL_DIR.resolve())


def default_settings(source: str | Path | None = DEMO) -> dict[str, Any]:
    """Image size, steps, guidance and example prompts suited to ``source``: the demo model's own (also for the
    path of a shipped demo folder, e.g. ``tomesd.demo.TEXTURED_MODEL_DIR``; :data:`DEMO_MOTION` adds its
    clips' frame count and draws at their size), the usual
    ones of a folder's pipeline class (:data:`CLASS_DEFAULTS`, e.g. Flux's distilled guidance 3.5 at 1024 px),
    or usual SD 1.x values for any other model.

    Returns:
        A dict with keys ``size`` (int, pixels), ``steps`` (int), ``guidance`` (float), ``prompts`` (list),
        and for :data:`DEMO_MOTION` ``frames`` (int).
    """
    from tomesd import demo

    if source is not None and str(source).strip() == DEMO_MOTION:
        from tomesd.demo.motion import CLIP_FRAMES, CLIP_SIZE

        return {**default_settings(DEMO), "size": CLIP_SIZE, "frames": CLIP_FRAMES}

    if source is not None and str(source).strip() not in ("", DEMO) and not is_demo_folder(source):
        return {**USER_MODEL_DEFAULTS, **CLASS_DEFAULTS.get(pipeline_class_name(source), {})}

    return {
        "size": demo.DEFAULT_SIZE,
        "steps": demo.DEFAULT_STEPS,
        "guidance": demo.DEFAULT_GUIDANCE,
        "prompts": list(demo.EXAMPLE_PROMPTS),
    }


def load_pipeline(
    source: str | Path | None = DEMO,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = torch.float32,
    config: str | Path | None = None,
    offload: str = "none",
    attention: str = "sdpa",
) -> Any:
    """Load a diffusion pipeline from ``source`` and move it to ``device``: Stable Diffusion 1.x/2.x/XL, the
    image DiT pipelines (PixArt, SD3, Flux, Sana) and the video pipelines (AnimateDiff, SVD, Wan) from a
    folder or model id; a single file holds SD 1.x/2.x/XL only.

    Args:
        source: ``"demo"``/``None``, a diffusers folder, a ``.safetensors`` checkpoint or a hub model id
            (see the module docstring).
        device: where the pipeline runs, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: weights and activations dtype, a ``torch.dtype`` or its name.
        config: for a single-file checkpoint only: a diffusers folder or model id whose configs and tokenizer
            match the file's architecture. Without it, diffusers takes them from the base model it recognises
            (e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``): from the hub, or offline from the local
            Hugging Face cache; if they are in neither, a ``ValueError`` says what to pass.
        offload: one of :data:`OFFLOAD`; ``"model"``/``"sequential"`` need a GPU ``device``.
        attention: one of :data:`ATTENTION`.

    Returns:
        The pipeline, with its own progress bar disabled (callers show theirs).

    Raises:
        ValueError: the source does not exist, is not safetensors, is not a pipeline with a denoiser (a
            single file: not SD 1.x/2.x/XL), a single file's configs are unavailable (offline without
            ``config`` or cache), ``config`` is given for a folder/model id, or ``offload``/``attention`` is
            unknown, needs a GPU, or (``"classic"``) does not apply to a DiT.
    """
    dtype = parse_dtype(dtype)
    check_placement(device, offload, attention)
    source = check_source(source, config)
    if source == DEMO:
        from tomesd.demo import load_pipeline as load_demo

        pipe = load_demo(device=device, dtype=dtype)
    elif source == DEMO_TEXTURED:
        from tomesd.demo import TEXTURED_MODEL_DIR

        pipe = _load_user_pipeline(str(TEXTURED_MODEL_DIR), dtype, None)
    elif source == DEMO_MOTION:
        from tomesd.demo.motion import load_video_pipeline

        pipe = load_video_pipeline(dtype=dtype)
    else:
        pipe = _load_user_pipeline(source, dtype, config)
    if not any(getattr(pipe, name, None) is not None for name in DENOISERS):
        raise ValueError(f"{source!r} loaded a {type(pipe).__name__}, which has no denoiser ({' or '.join(DENOISERS)}) "
                         "to patch")
    _place(pipe, torch.device(device), offload, attention)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_source(source: str | Path | None, config: str | Path | None = None) -> str:
    """Refuse a model source that cannot load, before anything is loaded or written: what can be known
    without reading a weight (the folder's ``model_index.json``, a single file's format and architecture from
    its header, the shape of a model id).

    Args:
        source: as for :func:`load_pipeline`.
        config: as for :func:`load_pipeline`.

    Returns:
        The source, normalised: ``"demo"`` for ``None`` or blank, else stripped.

    Raises:
        ValueError: as :func:`load_pipeline` for a source that does not exist, a folder that is not a diffusers
            pipeline, a file that is not a valid safetensors checkpoint of SD 1.x/2.x/XL, a malformed model id,
            or ``config`` given for anything but a single file.
    """
    source = DEMO if source is None or str(source).strip() in ("", DEMO) else str(source).strip()
    if config is not None and not source.endswith(".safetensors"):
        raise ValueError(f"config={str(config)!r} only applies to a single .safetensors checkpoint, not {source!r}")
    if source in (DEMO, DEMO_TEXTURED, DEMO_MOTION):
        return source
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ValueError(f"{source!r} is a folder but not a diffusers pipeline (no model_index.json in it)")
    elif path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(
                f"{source!r} is not a .safetensors file; other checkpoint formats (.ckpt, .bin, .pt) can run "
                "arbitrary code when loaded and are refused"
            )
        _single_file_architecture(path)
    elif source.endswith(".safetensors") or not _MODEL_ID.match(source):
        raise ValueError(
            f"model {source!r} not found: expected 'demo', 'demo-textured', 'demo-motion', an existing diffusers "
            "folder, an existing .safetensors file, or a model id like 'owner/name'"
        )
    return source


def parse_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` this machine has.

    Raises:
        ValueError: not a device name, a type other than :data:`DEVICE_TYPES`, or absent here (e.g. ``cuda``
            without a GPU, ``cuda:3`` on a machine with two).
    """
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {str(device)!r}; accepted: cpu, cuda, cuda:N, mps, xpu") from None
    if parsed.type not in DEVICE_TYPES:
        raise ValueError(f"device {str(device)!r}: pipelines run on {', '.join(DEVICE_TYPES)}, not {parsed.type}")
    if not DEVICE_TYPES[parsed.type]():
        raise ValueError(f"device {str(device)!r} is not available on this machine (try cpu)")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return parsed


def check_placement(device: str | torch.device, offload: str, attention: str) -> None:
    """Refuse unknown or impossible placement options before anything is loaded or written.

    Raises:
        ValueError: ``device`` is refused by :func:`parse_device`, ``offload`` is not in :data:`OFFLOAD`,
            ``attention`` not in :data:`ATTENTION`, or GPU-only offloading / xFormers asked for on the CPU.
    """
    device = parse_device(device)
    if offload not in OFFLOAD:
        raise ValueError(f"unknown offload {offload!r}; accepted: {', '.join(OFFLOAD)}")
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention {attention!r}; accepted: {', '.join(ATTENTION)}")
    if device.type == "cpu" and (offload != "none" or attention == "xformers"):
        wanted = f"offload={offload!r}" if offload != "none" else "attention='xformers'"
        raise ValueError(f"{wanted} needs a GPU device, not {str(device)!r}")


def _place(pipe: Any, device: torch.device, offload: str, attention: str) -> None:
    """Choose the attention implementation, then move the weights (or set up offloading) for ``device``."""
    if attention == "classic":
        from diffusers.models.attention_processor import AttnProcessor

        if getattr(pipe, "unet", None) is None or getattr(pipe, "transformer", None) is not None:
            raise ValueError(f"attention='classic' is for U-Net pipelines; {type(pipe).__name__}'s transformer needs "
                             "its own attention processors (use 'sdpa')")
        pipe.unet.set_attn_processor(AttnProcessor())
    elif attention == "xformers":
        pipe.enable_xformers_memory_efficient_attention()
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


def _load_user_pipeline(source: str, dtype: torch.dtype, config: str | Path | None) -> Any:
    """A folder, a single safetensors file or a hub id (checked by :func:`check_source`), refusing pickles
    and remote code."""
    from diffusers import DiffusionPipeline

    path = Path(source).expanduser()
    if path.is_dir():
        return DiffusionPipeline.from_pretrained(
            path, dtype=dtype, use_safetensors=True, local_files_only=True, trust_remote_code=False
        )
    if path.is_file():
        return _load_single_file(path, dtype, config)
    return DiffusionPipeline.from_pretrained(source, dtype=dtype, use_safetensors=True, trust_remote_code=False)


def _load_single_file(path: Path, dtype: torch.dtype, config: str | Path | None) -> Any:
    """A single-file checkpoint: weights from the file, configs and tokenizer from ``config`` or, without it,
    from its base model on the hub (or the local Hugging Face cache, offline)."""
    import diffusers

    pipeline_class, base = _single_file_architecture(path)
    pipeline_class = getattr(diffusers, pipeline_class)
    if config is not None:
        return pipeline_class.from_single_file(str(path), dtype=dtype, config=str(config))
    try:
        return pipeline_class.from_single_file(str(path), dtype=dtype)
    except OSError as error:  # the base model's configs are neither in the cache nor downloadable
        raise ValueError(
            f"{str(path)!r} holds weights only: diffusers takes the configs and tokenizer of its architecture "
            f"from its base model {base!r}, which is neither in the local Hugging Face cache nor downloadable "
            f"({type(error).__name__}). Pass config= (--config for the app and scripts/generate.py): a local "
            f"diffusers folder of the same architecture (model_index.json with unet/, vae/, text_encoder/, "
            f"tokenizer/, scheduler/; its weights are not used), or fetch the base model's configs once while "
            f"online: hf download {base} --include '*.json' '*.txt'"
        ) from error


def _single_file_architecture(path: Path) -> tuple[str, str]:
    """The pipeline class name and diffusers' base model id for a single-file checkpoint, recognised the way
    diffusers does it (from key names and shapes, read from the header without loading a weight).

    Raises:
        ValueError: the checkpoint is not a Stable Diffusion 1.x/2.x/XL text-to-image model.
    """
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, infer_diffusers_model_type
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as checkpoint:
            keys = checkpoint.keys()
            shapes = {key: torch.empty(checkpoint.get_slice(key).get_shape(), device="meta") for key in keys}
    except SafetensorError as error:  # e.g. a pickle renamed .safetensors
        raise ValueError(f"{str(path)!r} is not a valid safetensors file ({error}); only safetensors weights "
                         "are loaded") from None
    model_type = infer_diffusers_model_type(shapes)
    if model_type not in _SINGLE_FILE_PIPELINES:
        raise ValueError(
            f"{str(path)!r} is a {model_type!r} checkpoint; single files load here as Stable Diffusion "
            f"text-to-image models only: {', '.join(_SINGLE_FILE_PIPELINES)}"
        )
    return _SINGLE_FILE_PIPELINES[model_type], fetch_diffusers_config(shapes)["pretrained_model_name_or_path"]
