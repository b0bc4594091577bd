"""Prefill speed of K-token merging vs the uncompressed prompt, time to first token and peak memory: the
engine of ``tomesd bench-llm`` (and ``scripts/benchmark_llm.py``).

One prompt of ``context`` tokens (compressed) followed by ``tail`` tokens (kept, the question) is prefilled
end to end: token embedding, merge (K-token encoder, its cost included: random or trained weights) and the
model's forward up to the first token's logits with the KV cache filled. The conditions run interleaved in
one process (:func:`tomesd.lab.timing.time_interleaved`); each figure is the median over ``repeats`` rounds
after one warm-up round. The embedding + merge alone is timed as its own setting, for its share. Peak memory
is then measured once per condition: the process's resident-set growth during one prefill (freed memory
handed back to the system first), which is what the prefill adds on top of the loaded model.
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
from typing import Any, Callable

import torch

from tomesd.lab.timing import PeakMemory, time_interleaved
from tomesd.llm import KTokenEncoder, compress_prompt
from tomesd.llm.train import load_checkpoint
from tomesd.llm.weights import load_model

__all__ = ["QWEN25_05B", "build", "build_encoders", "peak_growth_mib", "prefill_fns", "run_benchmark"]

# Qwen2.5-0.5B's published architecture (config.json of Qwen/Qwen2.5-0.5B).
QWEN25_05B = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
)


def build(context: int, tail: int, layers: int, weights: str | None) -> tuple[Any, torch.Tensor, torch.Tensor, str]:
    """The model, the context and tail ids (1, N), (1, T), and a description of what was measured.

    Args:
        context: prompt tokens that are compressed.
        tail: prompt tokens kept uncompressed after the context.
        layers: decoder layers of the random-weight model (used when ``weights`` is None).
        weights: a real model (a name of :data:`tomesd.llm.weights.MODELS` or a local folder), or None for
            Qwen2.5-0.5B's architecture with random weights and random token ids.

    Raises:
        ValueError: the real model's text (argparse's source) is shorter than ``context + tail`` tokens.
    """
    if weights is None:
        from transformers import Qwen2Config, Qwen2ForCausalLM

        torch.manual_seed(0)
        config = Qwen2Config(**{**QWEN25_05B, "num_hidden_layers": layers})
        ids = torch.randint(0, config.vocab_size, (1, context + tail))
        return Qwen2ForCausalLM(config).eval(), ids[:, :context], ids[:, context:], (
            f"Qwen2.5-0.5B architecture ({layers} layers), random weights, random token ids")
    model, tokenizer = load_model(weights)
    ids = tokenizer(inspect.getsource(argparse), add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] < context + tail:
        raise ValueError(f"the text has {ids.shape[1]} tokens, fewer than --context + --tail")
    return model, ids[:, :context], ids[:, context : context + tail], (
        f"{weights} ({type(model).__name__}), real weights, argparse's source as the prompt")


def build_encoders(model: Any, ks: list[int], encoder_dir: str | None) -> dict[int, KTokenEncoder]:
    """One encoder per K: a trained one from ``encoder_dir`` for its K, random (non-zero output) otherwise.

    Raises:
        ValueError: the trained encoder's K is not among ``ks``.
    """
    encoders = {}
    for k in ks:
        encoders[k] = KTokenEncoder(model.get_input_embeddings().embedding_dim, k).eval()
        torch.nn.init.normal_(encoders[k].down.weight, std=0.02)  # a trained encoder's output layer is not zero
    if encoder_dir is not None:
        trained, _ = load_checkpoint(encoder_dir, model)  # the encoder only: its LoRA costs the same time
        if trained.k not in encoders:
            raise ValueError(f"--encoder-dir holds an encoder for k={trained.k}, not among --ks {ks}")
        encoders[trained.k] = trained
    return encoders


def prefill_fns(model: Any, ids: torch.Tensor, tail: torch.Tensor, encoders: dict[int, KTokenEncoder]) -> tuple[
        dict[str, Callable[[], Any]], dict[str, Callable[[], Any]], dict[str, int]]:
    """(condition -> one end-to-end prefill, condition -> its embedding + merge alone, condition -> tokens)."""

    def inputs(encoder: KTokenEncoder | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if encoder is None:
            embeds = model.get_input_embeddings()(torch.cat([ids, tail], 1))  # (1, N + T, C)
            return embeds, torch.ones(embeds.shape[:2], dtype=torch.long), None
        prompt = compress_prompt(model, ids, encoder.k, tail_ids=tail, encoder=encoder)
        return prompt.inputs_embeds, prompt.attention_mask, prompt.position_ids

    def prefill(encoder: KTokenEncoder | None) -> Any:
        embeds, mask, positions = inputs(encoder)
        logits = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                       logits_to_keep=1).logits  # (1, 1, V)
        return logits[:, -1].argmax(-1)  # the first token

    conditions = {"uncompressed": None, **{f"K={k}": enc for k, enc in encoders.items()}}
    full = {name: (lambda enc=enc: prefill(enc)) for name, enc in conditions.items()}
    merge = {name: (lambda enc=enc: inputs(enc)) for name, enc in conditions.items()}
    with torch.inference_mode():
        tokens = {name: inputs(enc)[0].shape[1] for name, enc in conditions.items()}
    return full, merge, tokens


def peak_growth_mib(fn: Callable[[], Any]) -> float:
    """Resident-set growth (MiB) of the process while ``fn`` runs, after handing freed memory back."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the growth then also counts reusable freed memory
        pass
    with PeakMemory("cpu") as before:
        pass
    with PeakMemory("cpu") as during:
        fn()
    return max(0.0, during.mib - before.mib)


def run_benchmark(context: int = 2016, tail: int = 32, ks: list[int] = (2, 4), repeats: int = 5, threads: int = 1,
                  layers: int = QWEN25_05B["num_hidden_layers"], weights: str | None = None,
                  encoder_dir: str | None = None, out: str | None = None) -> list[dict[str, Any]]:
    """Time every condition, print the table and (with ``out``) write it as JSON.

    Args: as :func:`build` and :func:`build_encoders`; ``repeats`` timed rounds after one warm-up,
    ``threads`` torch CPU threads, ``out`` an optional JSON file (its ``settings`` are these arguments).

    Returns:
        One row per condition: condition, tokens, seconds, speedup, merge_share, peak_growth_mib.
    """
    settings = dict(context=context, tail=tail, ks=list(ks), repeats=repeats, threads=threads, layers=layers,
                    weights=weights, encoder_dir=encoder_dir, out=out)
    torch.set_num_threads(threads)
    model, ids, tail_ids, what = build(context, tail, layers, weights)
    full, merge, tokens = prefill_fns(model, ids, tail_ids, build_encoders(model, list(ks), encoder_dir))
    timed = {**full, **{f"{name} (embed+merge)": fn for name, fn in merge.items()}}
    with torch.inference_mode():
        timings = time_interleaved(timed, repeats=repeats, warmup=1, progress=True)
        memory = {name: peak_growth_mib(fn) for name, fn in full.items()}
    base = timings["uncompressed"].median
    print(f"{what}, fp32, {threads} thread(s), prompt {context}+{tail} tokens, median of {repeats}")
    print(f"{'condition':<14}{'tokens':>8}{'TTFT s':>9}{'speedup':>9}{'embed+merge share':>19}{'peak +MiB':>11}")
    rows = []
    for name in full:
        seconds = timings[name].median
        row = {"condition": name, "tokens": tokens[name], "seconds": seconds, "speedup": base / seconds,
               "merge_share": timings[f"{name} (embed+merge)"].median / seconds, "peak_growth_mib": memory[name]}
        rows.append(row)
        print(f"{name:<14}{row['tokens']:>8}{seconds:>9.3f}{row['speedup']:>8.2f}x{100 * row['merge_share']:>18.2f}%"
              f"{row['peak_growth_mib']:>11.1f}")
    if out:
        with open(out, "w") as f:
            json.dump({"settings": settings, "measured": what, "rows": rows}, f, indent=2)
    return rows
