"""Prefill speed of K-token merging vs the uncompressed prompt, on a Qwen2.5-0.5B-sized model.

The model is built from its architecture alone (random weights, nothing downloaded). One prompt of
``--context`` tokens (compressed) followed by ``--tail`` tokens (kept, the question) is prefilled end to
end: token embedding, merge (K-token encoder, its cost included) and the model's forward up to the first
token's logits with the KV cache filled. The conditions run interleaved in one process; each figure is the
median over ``--repeats`` rounds after one warm-up round.

    .venv/bin/python scripts/benchmark_llm.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tqdm import tqdm
from transformers import Qwen2Config, Qwen2ForCausalLM

from tomesd.llm import KTokenEncoder, compress_prompt

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


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--context", type=int, default=2016, help="prompt tokens that are compressed")
    parser.add_argument("--tail", type=int, default=32, help="prompt tokens kept uncompressed after the context")
    parser.add_argument("--ks", type=int, nargs="+", default=[2, 4], help="block lengths to measure")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--layers", type=int, default=QWEN25_05B["num_hidden_layers"], help="decoder layers")
    parser.add_argument("--out", default=None, help="optional JSON file for the measured figures")
    return parser.parse_args()


@torch.inference_mode()
def prefill(model: Qwen2ForCausalLM, ids: torch.Tensor, tail: torch.Tensor, encoder: KTokenEncoder | None) -> dict:
    """One end-to-end prefill; returns its total time and the time spent embedding + merging (seconds)."""
    start = time.perf_counter()
    if encoder is None:
        embeds = model.get_input_embeddings()(torch.cat([ids, tail], 1))  # (1, N + T, C)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        positions = None
    else:
        prompt = compress_prompt(model, ids, encoder.k, tail_ids=tail, encoder=encoder)
        embeds, mask, positions = prompt.inputs_embeds, prompt.attention_mask, prompt.position_ids
    merged = time.perf_counter()
    model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1)
    end = time.perf_counter()
    return {"total": end - start, "merge": merged - start, "tokens": embeds.shape[1]}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = Qwen2Config(**{**QWEN25_05B, "num_hidden_layers": args.layers})
    model = Qwen2ForCausalLM(config).eval()
    encoders = {k: KTokenEncoder(config.hidden_size, k).eval() for k in args.ks}
    for encoder in encoders.values():  # a trained encoder's output layer is not zero; cost is the same either way
        torch.nn.init.normal_(encoder.down.weight, std=0.02)
    ids = torch.randint(0, config.vocab_size, (1, args.context))
    tail = torch.randint(0, config.vocab_size, (1, args.tail))
    conditions = {"uncompressed": None, **{f"K={k}": enc for k, enc in encoders.items()}}
    runs: dict[str, list[dict]] = {name: [] for name in conditions}
    for round_ in tqdm(range(args.repeats + 1), desc="rounds"):
        for name, encoder in conditions.items():  # interleaved: every round measures every condition
            result = prefill(model, ids, tail, encoder)
            if round_ > 0:
                runs[name].append(result)
    base = statistics.median(r["total"] for r in runs["uncompressed"])
    rows = []
    print(f"Qwen2.5-0.5B architecture ({args.layers} layers), random weights, fp32, {args.threads} thread(s), "
          f"prompt {args.context}+{args.tail} tokens, median of {args.repeats}")
    print(f"{'condition':<14}{'tokens':>8}{'prefill s':>11}{'speedup':>9}{'embed+merge share':>19}")
    for name, results in runs.items():
        total = statistics.median(r["total"] for r in results)
        share = statistics.median(r["merge"] / r["total"] for r in results)
        row = {"condition": name, "tokens": results[0]["tokens"], "seconds": total, "speedup": base / total,
               "merge_share": share}
        rows.append(row)
        print(f"{name:<14}{row['tokens']:>8}{total:>11.3f}{row['speedup']:>8.2f}x{100 * share:>18.2f}%")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"settings": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
