"""The K-token training script as a user runs it: a local causal LM folder and a JSON-lines file of their own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.llm_models import tiny_qwen
from tomesd.llm.task import build_tree_tokenizer, tree_examples
from tomesd.llm.train import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def test_train_ktoken_on_user_data_writes_a_loadable_checkpoint(tmp_path):
    tokenizer = build_tree_tokenizer()
    model_dir, out = tmp_path / "model", tmp_path / "k2"
    tiny_qwen(vocab=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = tmp_path / "data.jsonl"
    rows = [{"context": e.context, "question": e.question, "answer": e.answer}
            for e in tree_examples(12, 4, 6, seed=0)]
    data.write_text("\n".join(map(json.dumps, rows)) + "\n")
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "train_ktoken.py"), "--model", str(model_dir), "--data", str(data),
         "--k", "2", "--steps", "3", "--batch-size", "2", "--eval-count", "4", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["k"], summary["steps"], summary["eval_count"]) == (2, 3, 4)
    assert 0.0 <= summary["accuracy_trained"] <= 1.0
    encoder, wrapped = load_checkpoint(out, tiny_qwen(vocab=len(tokenizer)))
    assert encoder.k == 2 and hasattr(wrapped, "peft_config")
