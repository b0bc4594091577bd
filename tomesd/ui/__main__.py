"""``tomesd app`` (``python -m tomesd.ui``, ``python -m ui`` in a clone): launch the A/B app on 127.0.0.1 (no
public link unless ``--share``)."""

from __future__ import annotations

import argparse

from tomesd.lab.generation import DEFAULT_COMPILE_BACKEND, check_compile_backend
from tomesd.lab.loading import DEMO, DTYPES

from .app import build_app
from .limits import ServerLimits


def main(argv: list[str] | None = None, prog: str | None = None) -> None:
    """Parse the command line and serve the app until interrupted."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--model", default=DEMO,
                        help="'demo' (default, offline), 'demo-textured', a diffusers folder, a .safetensors file or "
                             "a model id")
    parser.add_argument("--config", help="for a single .safetensors --model: a diffusers folder or model id with its "
                        "architecture's configs and tokenizer (default: its base model, from the hub or cache)")
    parser.add_argument("--device", default="cpu", help="e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    defaults = ServerLimits()
    parser.add_argument("--max-pixels", type=int, default=defaults.max_pixels,
                        help=f"largest width x height per image a request may ask for (default {defaults.max_pixels})")
    parser.add_argument("--max-steps", type=int, default=defaults.max_steps,
                        help="most denoising steps per request, steps x timed runs x ratios (default "
                             f"{defaults.max_steps})")
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                        help="time budget of one request once its model is loaded; it stops after the step that "
                             f"passes it (default {defaults.max_seconds:g})")
    parser.add_argument("--compile-backend", default=DEFAULT_COMPILE_BACKEND,
                        help="torch.compile backend of the page's compile checkbox (default "
                             f"{DEFAULT_COMPILE_BACKEND}; 'eager' checks the path fast)")
    args = parser.parse_args(argv)
    try:
        limits = ServerLimits(args.max_pixels, args.max_steps, args.max_seconds)
        check_compile_backend(args.compile_backend)
    except ValueError as error:
        parser.error(str(error))
    app = build_app(args.model, args.device, args.dtype, args.config, limits, args.compile_backend)
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
