"""Shared fixtures for the app and script tests: the toy pipelines of ``tiny.py`` saved to disk, as a
user's local model folders (random weights: these tests exercise loading, patching, timing and logging,
not image quality)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_SIZE = 32  # pixels: the toy U-Net's 16x16 latents through the toy VAE (x2)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A toy SD 1.x pipeline saved in diffusers format (safetensors)."""
    import tiny

    root = tmp_path_factory.mktemp("models")
    path = root / "tiny-sd"
    tiny.sd_pipeline(root / "tokenizer").save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub with an empty cache, as on a machine that never downloaded anything."""
    import huggingface_hub.constants

    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def zoo_dirs(tmp_path_factory):
    """name -> a folder holding that tiny pipeline of ``diffusers_zoo.PIPELINES`` (DiT and video pipelines),
    saved with ``save_pretrained`` on first use, as a user's local model folder."""
    import diffusers_zoo

    folders: dict[str, Path] = {}

    def folder(name: str) -> Path:
        if name not in folders:
            root = tmp_path_factory.mktemp(name)
            pipe, _ = diffusers_zoo.PIPELINES[name](root / "tokenizers")
            pipe.save_pretrained(root / "model", safe_serialization=True)
            folders[name] = root / "model"
        return folders[name]

    return folder
