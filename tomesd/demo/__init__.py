"""The embedded demo model: a small text-to-image Stable Diffusion pipeline trained on coloured shapes.

It ships inside the package (``tomesd/demo_model``), so the app, the scripts and the quality measurements
work offline with a model that really draws what it is asked::

    import tomesd.demo
    tomesd.demo.load_pipeline()("a red circle").images[0].save("x.png")

Prompts follow the grammar of its training captions, ``a [small|large] <colour> <shape> [on a <colour>
background]`` (see :mod:`tomesd.demo.shapes`); :mod:`tomesd.demo.detector` checks what an image shows.
The generator and the detector also know textures (``a red and white vertical striped circle on a blue
dotted background``); ``tomesd train-demo``'s texture stages teach them to the model. A motion adapter
trained on moving-shape clips makes it a video model (:mod:`tomesd.demo.motion`, ``tomesd train-demo-motion``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # diffusers is imported when a pipeline is loaded: the generator and detector need none
    from diffusers import StableDiffusionPipeline

__all__ = [
    "DEFAULT_GUIDANCE",
    "DEFAULT_SIZE",
    "DEFAULT_STEPS",
    "DEMO_MODEL_DIR",
    "TEXTURED_MODEL_DIR",
    "EXAMPLE_PROMPTS",
    "load_pipeline",
]

#: The shipped diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/).
DEMO_MODEL_DIR = Path(__file__).resolve().parent.parent / "demo_model"
#: The same model continued on the textured set (``tomesd train-demo --stages texture-vae texture-unet
#: texture-finetune``): stripes, checks, dots, gradients and outlines, for measuring what merging does to
#: fine detail (``tomesd frontier``); see the README's model card.
TEXTURED_MODEL_DIR = DEMO_MODEL_DIR.with_name("demo_model_textured")
#: Image side in pixels: the VAE halves it, so the U-Net's first attention level sees 64 x 64 = 4096 tokens.
DEFAULT_SIZE = 128
#: Sampling steps of the shipped multistep solver.
DEFAULT_STEPS = 20
#: Classifier-free guidance scale.
DEFAULT_GUIDANCE = 5.0
#: Prompts in the model's caption grammar, covering its colours, shapes and sizes. Colours, backgrounds and
#: sizes come out as asked; shapes are still rough (see the README's model card for the measured adherence).
EXAMPLE_PROMPTS = [
    "a red circle",
    "a large blue square on a yellow background",
    "a small green triangle on a white background",
    "a large yellow circle on a purple background",
    "a small white square on a black background",
    "a large orange triangle on a blue background",
]


def load_pipeline(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, progress: bool = False,
    folder: str | Path | None = None,
) -> StableDiffusionPipeline:
    """Load the shipped demo pipeline from :data:`DEMO_MODEL_DIR`, offline and from safetensors only.

    Args:
        device: where to put the pipeline, e.g. ``"cpu"``.
        dtype: weight dtype (``torch.float32``; ``torch.bfloat16``/``float16`` where the device supports it).
        progress: show the sampling progress bar (off by default).
        folder: another folder written by ``tomesd train-demo --out`` (default: the shipped one).

    Returns:
        A ``StableDiffusionPipeline`` without safety checker; call it with a prompt, it draws
        :data:`DEFAULT_SIZE` pixel images by default (pass ``num_inference_steps=DEFAULT_STEPS`` and
        ``guidance_scale=DEFAULT_GUIDANCE`` for the documented settings).

    Raises:
        TypeError: ``dtype`` is not a ``torch.dtype``.
        FileNotFoundError: the weights are missing (train them with ``tomesd train-demo``).
    """
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float32, got {dtype!r}")
    folder = DEMO_MODEL_DIR if folder is None else Path(folder)
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(
            f"the demo model is missing from {folder}; train it with `tomesd train-demo` "
            "(or `python scripts/train_demo.py`)"
        )
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        folder, dtype=dtype, use_safetensors=True, local_files_only=True,
        safety_checker=None, requires_safety_checker=False,
    )
    pipe = pipe.to(torch.device(device))
    pipe.set_progress_bar_config(disable=not progress)
    return pipe
