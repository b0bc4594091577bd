"""The tomesd A/B app (Gradio). Start it with ``python -m ui``; see ``python -m ui --help``."""

from .app import build_app

__all__ = ["build_app"]
