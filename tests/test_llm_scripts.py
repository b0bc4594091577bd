"""The K-token commands as a user runs them (``tomesd train-ktoken``, ``tomesd reproduce-llm``, ``tomesd
llm-examples``): a local causal LM folder and data of their own; each script shim runs once as a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.llm_models import tiny_qwen
from tomesd.cli.llm_examples import main as llm_examples
from tomesd.cli.reproduce_llm import main as reproduce_llm
from tomesd.cli.train_ktoken import main as train_ktoken
from tomesd.llm.task import build_tree_tokenizer, tree_examples
from tomesd.llm import KTokenEncoder
from tomesd.llm.train import load_checkpoint, save_checkpoint

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
    assert train_ktoken(["--model", str(model_dir), "--data", str(data), "--k", "2", "--steps", "3",
                         "--batch-size", "2", "--eval-count", "4", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["k"], summary["steps"], summary["eval_count"]) == (2, 3, 4)
    assert 0.0 <= summary["accuracy_trained"] <= 1.0
    encoder, wrapped = load_checkpoint(out, tiny_qwen(vocab=len(tokenizer)))
    assert encoder.k == 2 and hasattr(wrapped, "peft_config")


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.mark.parametrize("task, reference", [("lookup", "guess among the context's parents"),
                                             ("relation", "the commonest answer")])
def test_real_weights_protocol_runs_stops_and_resumes_at_tiny_settings(tmp_path, capsys, task, reference):
    """The protocol on a local tiny model: a call stopped by its time limit resumes (through the script, with
    the same flags) and completes; its table ends with the task's no-model reference."""
    tokenizer = build_tree_tokenizer()
    model_dir, work, report = tmp_path / "model", tmp_path / "work", tmp_path / "report"
    tiny_qwen(vocab=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    flags = ["--model", str(model_dir), "--work", str(work), "--report", str(report), "--nodes", "3", "5", "--steps",
             "3", "--warmup", "1", "--eval-count", "4", "--train-trees", "40", "--save-every", "100", "--task", task]
    # stops (and saves) after its first step
    assert reproduce_llm(["real", *flags, "--stop-after-minutes", "0"]) == 3
    assert "run the same command again" in capsys.readouterr().out
    assert (work / "k4" / "train_state.pt").is_file() and not (work / "k4" / "done.json").exists()
    done = _run([str(ROOT / "scripts" / "reproduce_llm_real.py"), *flags])
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((report / "llm_real_tree_model.json").read_text())
    assert "variant" not in result["settings"] and result["settings"]["train_trees"] == 40
    assert set(result["accuracy"]) == {"K=1, no training", "K=1, LoRA", "K=4, training-free mean (K=1 LoRA model)",
                                       "K=4, encoder + LoRA"}
    assert all(0.0 <= acc <= 1.0 for acc in result["accuracy"].values())
    assert len(json.loads((work / "k4" / "done.json").read_text())["losses"]) == 3
    assert [run["steps_done"] for run in map(json.loads, (work / "k4" / "runs.jsonl").read_text().splitlines())] == [1, 3]
    table = (report / "llm_real_tree_model.md").read_text().splitlines()
    assert table[0].startswith("| setting |") and len(table) == 2 + 4 + 1
    share = result["reference"][f"reference, no model: {reference}"]
    assert 0.0 < share <= 1.0 and table[-1] == f"| reference, no model: {reference} | - | {100 * share:.1f}% |"


def test_the_k_stage_can_start_from_the_k1_adapters(tmp_path):
    """``--k-from-k1``: the K stage's LoRA starts from the finished K=1 stage's weights (two steps at a tiny
    learning rate later they still nearly equal K=1's, far from a fresh adapter's zero B matrices); without a
    finished k1 stage the K stage is refused, nothing trained."""
    from safetensors.torch import load_file

    tokenizer = build_tree_tokenizer()
    model_dir, work = tmp_path / "model", tmp_path / "work"
    tiny_qwen(vocab=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    flags = ["--model", str(model_dir), "--work", str(work), "--report", str(tmp_path / "report"), "--nodes", "3",
             "5", "--warmup", "0", "--eval-count", "4", "--train-trees", "40", "--k-from-k1"]
    with pytest.raises(ValueError, match="the k1 stage is not finished"):
        reproduce_llm(["real", *flags, "--stages", "k4", "--steps", "1"])
    assert not (work / "k4").exists()
    assert reproduce_llm(["real", *flags, "--stages", "k1", "--steps", "2", "--lr", "1e-2"]) == 0
    assert reproduce_llm(["real", *flags, "--stages", "k4", "--steps", "2", "--lr", "1e-7"]) == 0
    k1 = load_file(work / "k1" / "lora" / "adapter_model.safetensors")
    k4 = load_file(work / "k4" / "lora" / "adapter_model.safetensors")
    b = [name for name in k1 if "lora_B" in name]
    assert b and set(b) <= set(k4)
    assert any(k1[name].abs().max() > 1e-4 for name in b)  # K=1 trained its B matrices away from 0
    assert all(torch.allclose(k4[name], k1[name], atol=1e-5) for name in b)  # a fresh adapter's B would be 0


def test_training_trees_of_each_task_and_with_reconstruction(tmp_path, monkeypatch):
    """``--reconstruct`` trains both stages on the same trees, each with a last turn answered by its context;
    ``--task relation`` trains on the paper's indented trees."""
    from tomesd.lab import llm_reproduce
    from tomesd.llm.task import RECONSTRUCT_QUESTION

    tokenizer = build_tree_tokenizer()
    model_dir = tmp_path / "model"
    tiny_qwen(vocab=len(tokenizer)).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    trained = {}

    def record_stage(base, tokenizer, examples, k, *rest):
        trained[k] = examples
        return {"k": k}  # as a finished stage

    monkeypatch.setattr(llm_reproduce, "train_stage", record_stage)
    flags = ["--model", str(model_dir), "--work", str(tmp_path / "work"), "--nodes", "3", "5", "--train-trees", "6",
             "--stages", "k4", "k1"]
    assert reproduce_llm(["real", *flags, "--reconstruct"]) == 0
    assert trained[4] == trained[1] and len(trained[4]) == 6
    assert all(e.turns()[-1] == (RECONSTRUCT_QUESTION, e.context) for e in trained[4])
    trained.clear()
    assert reproduce_llm(["real", *flags]) == 0
    assert all(RECONSTRUCT_QUESTION not in dict(e.turns()) for e in trained[4])
    assert reproduce_llm(["real", *flags, "--task", "relation"]) == 0  # the paper's form
    assert all(e.context.startswith("Tree: ") and e.answer in ("true", "false") for e in trained[4])


def test_examples_with_a_chat_template_and_a_trained_encoder(tmp_path):
    tokenizer = build_tree_tokenizer()
    # A chat template of the Qwen kind: an opening before the user's text, a closing after it.
    tokenizer.chat_template = "who is {% for m in messages %}{{ m['content'] }}{% endfor %} ? the"
    model_dir, encoder_dir, out = tmp_path / "model", tmp_path / "k4", tmp_path / "examples.md"
    model = tiny_qwen(vocab=len(tokenizer))
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    save_checkpoint(encoder_dir, KTokenEncoder(model.config.hidden_size, 4))
    example = tree_examples(1, 6, 6, seed=0)[0]
    assert llm_examples(["--model", str(model_dir), "--encoder-dir", str(encoder_dir), "--document", example.context,
                         "--question", example.question, "--max-new-tokens", "2", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0] for row in rows] == ["| uncompressed", "| K=2, mean", "| K=4, mean",
                                                     "| K=4, trained encoder + LoRA"]
    reloaded = AutoTokenizer.from_pretrained(model_dir)
    tokens = len(reloaded(example.context, add_special_tokens=False)["input_ids"])
    assert f"document: {tokens} tokens (compressed)" in out.read_text()


def test_miniature_reproduction_writes_its_table_plot_and_checkpoints_at_tiny_settings(tmp_path, capsys):
    out, report = tmp_path / "out", tmp_path / "report"
    assert reproduce_llm(["miniature", "--nodes", "3", "4", "--hidden", "64", "--layers", "1", "--pretrain-steps", "2",
                          "--adapt-steps", "2", "--batch-size", "2", "--eval-count", "4", "--out", str(out),
                          "--report", str(report)]) == 0
    result = json.loads((report / "llm_miniature.json").read_text())
    assert list(result["accuracy"]) == ["K=1 (uncompressed)", "K=4, training-free mean", "K=4, trained encoder + LoRA"]
    assert result["settings"]["pretrain_steps"] == 2 and "variant" not in result["settings"]
    assert (report / "llm_miniature_loss.png").is_file() and (out / "base" / "config.json").is_file()
    encoder, _ = load_checkpoint(out / "k4", AutoModelForCausalLM.from_pretrained(out / "base"))
    assert encoder.k == 4
    assert "| reference: guess among the context's parents (no model) |" in capsys.readouterr().out


@pytest.mark.parametrize("script, command", [("train_ktoken.py", "train-ktoken"), ("llm_examples.py", "llm-examples"),
                                             ("reproduce_llm_miniature.py", "reproduce-llm miniature"),
                                             ("reproduce_llm_code.py", "reproduce-llm code")])
def test_the_script_shims_parse_their_commands_flags(script, command):
    """The scripts the README and the background runs name keep their flags (``--help`` lists them)."""
    done = _run([str(ROOT / "scripts" / script), "--help"])
    assert done.returncode == 0, done.stderr[-2000:]
    flags = {"train-ktoken": "--tree-questions", "llm-examples": "--max-new-tokens",
             "reproduce-llm miniature": "--pretrain-curriculum", "reproduce-llm code": "--context-lines"}[command]
    assert done.stdout.startswith("usage: ") and flags in done.stdout
