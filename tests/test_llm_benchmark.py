"""The prefill benchmark (``tomesd bench-llm``, :mod:`tomesd.lab.llm_bench`) at tiny settings: it runs, reports
every condition, honours a trained encoder; its script shim runs once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.llm_models import tiny_qwen
from tomesd.cli.bench_llm import main as bench_llm
from tomesd.llm import KTokenEncoder
from tomesd.llm.task import build_tree_tokenizer
from tomesd.llm.train import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _bench(args: list[str]) -> subprocess.CompletedProcess:
    """The script shim, as a user runs it."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_llm.py"), "--repeats", "1", *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_benchmark_on_a_local_model_with_a_trained_encoder(tmp_path, capsys):
    tokenizer = build_tree_tokenizer()
    model_dir, encoder_dir, out = tmp_path / "model", tmp_path / "k4", tmp_path / "bench.json"
    model = tiny_qwen(vocab=len(tokenizer))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    save_checkpoint(encoder_dir, KTokenEncoder(model.config.hidden_size, 4))
    assert bench_llm(["--repeats", "1", "--weights", str(model_dir), "--encoder-dir", str(encoder_dir),
                      "--context", "30", "--tail", "5", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    result = json.loads(out.read_text())
    rows = {row["condition"]: row for row in result["rows"]}
    assert [rows[c]["tokens"] for c in ("uncompressed", "K=2", "K=4")] == [35, 15 + 5, 8 + 5]
    assert rows["uncompressed"]["speedup"] == 1.0
    assert all(row["seconds"] > 0 and 0 < row["merge_share"] and row["peak_growth_mib"] >= 0 for row in rows.values())
    assert "real weights, argparse's source" in result["measured"]
    assert "TTFT s" in stdout and "peak +MiB" in stdout


def test_the_script_benchmarks_the_random_architecture(tmp_path):
    out = tmp_path / "bench.json"
    _bench(["--layers", "1", "--context", "12", "--tail", "4", "--ks", "4", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["condition"], r["tokens"]) for r in rows] == [("uncompressed", 16), ("K=4", 3 + 4)]
