"""The standard-library code task (tomesd.llm.code) and its reproduction (``tomesd reproduce-llm code``) at tiny
settings."""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import pytest

from tests.llm_models import tiny_qwen
from tomesd.cli.reproduce_llm import main as reproduce_llm
from tomesd.llm.code import code_examples, next_line_metrics, split_files, stdlib_files
from tomesd.llm.task import NODE_NAMES, build_tree_tokenizer



def _fake_stdlib(root: Path, files: int = 12, lines: int = 30) -> Path:
    """Source files whose lines use the tree task's words, so that its word-level tokenizer reads them."""
    for i in range(files):
        folder = root / ("test" if i == 0 else "pkg" if i % 2 else "")
        folder.mkdir(parents=True, exist_ok=True)
        body = "".join(f"{NODE_NAMES[(i + n) % 26]} is the parent of {NODE_NAMES[n % 26]} .\n" if n % 5 else "\n"
                       for n in range(lines))
        (folder / f"mod{i}.py").write_text(body)
    return root


def test_stdlib_files_leave_the_tests_out_and_split_stably():
    files = stdlib_files()
    root = Path(sysconfig.get_paths()["stdlib"])
    assert files and all(p.suffix == ".py" for p in files)
    assert not any("test" in p.relative_to(root).parts[:-1] for p in files)
    training, held_out = split_files(files)
    assert not set(training) & set(held_out) and len(training) + len(held_out) == len(files)
    assert 0.03 < len(held_out) / len(files) < 0.2  # about the 10% asked for
    assert split_files(files) == (training, held_out)  # a pure function of the paths


def test_code_examples_cut_at_lines(tmp_path):
    root = _fake_stdlib(tmp_path)
    files = stdlib_files(root)
    assert len(files) == 11  # test/ left out
    examples = code_examples(files, 20, seed=0, context_lines=8, tail_lines=2)
    assert examples == code_examples(files, 20, seed=0, context_lines=8, tail_lines=2)
    for e in examples:
        assert e.context.count("\n") == 8 and e.question.count("\n") == 2 and e.question.endswith("\n")
        assert e.answer.strip() and "\n" not in e.answer
        source = next(p.read_text() for p in files if e.context + e.question + e.answer + "\n" in p.read_text())
        assert source  # the three parts are consecutive lines of one file
    with pytest.raises(ValueError, match="no file has more than 40 lines"):
        code_examples(files, 1, seed=0, context_lines=36, tail_lines=4)
    with pytest.raises(ValueError, match="held_out_share must be in"):
        split_files(files, root, held_out_share=1.0)


def test_next_line_metrics_are_a_loss_and_a_share(tmp_path):
    tokenizer = build_tree_tokenizer()
    model = tiny_qwen(vocab=len(tokenizer))
    examples = code_examples(stdlib_files(_fake_stdlib(tmp_path)), 5, seed=1, context_lines=8, tail_lines=2)
    for k in (1, 4):
        metrics = next_line_metrics(model, tokenizer, examples, k, batch_size=2)
        assert metrics["loss"] > 0 and 0.0 <= metrics["exact_match"] <= 1.0


def test_code_reproduction_trains_and_reports_at_tiny_settings(tmp_path):
    tokenizer = build_tree_tokenizer()
    model_dir, report = tmp_path / "model", tmp_path / "report"
    tiny_qwen(vocab=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    stdlib = _fake_stdlib(tmp_path / "lib", files=40)
    assert reproduce_llm(["code", "--model", str(model_dir), "--stdlib", str(stdlib), "--work", str(tmp_path / "work"),
                          "--report", str(report), "--context-lines", "8", "--tail-lines", "2", "--steps", "2",
                          "--warmup", "1", "--train-count", "8", "--eval-count", "3"]) == 0
    result = json.loads((report / "llm_real_code_model.json").read_text())
    assert list(result["metrics"]) == ["K=1, uncompressed prefix", "K=4, training-free mean", "K=4, encoder + LoRA"]
    assert result["files"]["held_out"] > 0 and result["eval_count"] == 3
