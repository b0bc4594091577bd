"""scripts/generate.py end to end on a toy pipeline folder: prompt files, logs, summary, resume, bad input,
Ctrl-C and hard kills, and two processes under ``accelerate launch``."""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from scripts import generate as gen

ROOT = Path(__file__).resolve().parents[1]
LOG_FIELDS = {"offload", "attention", "prompt", "negative_prompt", "seed", "ratio", "patch_options", "steps", "width", "height", "seconds",
              "its", "peak_memory_mib", "memory_kind", "device", "dtype", "versions", "rank", "world_size", "file"}


def _args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--out", str(out), "--steps", "1", "--width", "32", "--height", "32", *extra]


def _log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("log.rank*.jsonl")) for line in path.read_text().splitlines()]


def _images(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.png") if p.name != gen.SHEET_FILE}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- prompt files

@pytest.mark.parametrize(
    "name, text",
    [
        ("p.txt", "# a comment\na red cat\n\na blue dog\n"),
        ("p.csv", "prompt,negative_prompt\na red cat,\na blue dog,blurry\n"),
        ("p.jsonl", '{"prompt": "a red cat"}\n\n{"prompt": "a blue dog", "negative_prompt": "blurry"}\n'),
    ],
)
def test_prompt_files(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    prompts = gen.read_prompts(tmp_path / name)
    assert [p for p, _ in prompts] == ["a red cat", "a blue dog"]
    if not name.endswith(".txt"):
        assert prompts[1][1] == "blurry"


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("p.md", "a cat", "unknown extension '.md'"),
        ("p.csv", "text\na cat\n", "entry 1: no 'prompt'"),
        ("p.jsonl", '{"prompt": "a"}\nnot json\n', "line 2: not JSON"),
        ("p.txt", "\n# only a comment\n", "contains no prompt"),
    ],
)
def test_bad_prompt_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        gen.read_prompts(tmp_path / name)


def test_jobs_put_ratios_innermost_and_names_are_unique():
    jobs = gen.plan_jobs([("a", ""), ("a", "ugly")], [0, 1], [0.0, 0.5])
    assert [(j.seed, j.ratio) for j in jobs[:4]] == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)]
    assert len({j.filename for j in jobs}) == len(jobs) == 8


# ---------------------------------------------------------------- end to end

def test_batch_writes_images_log_and_summary_then_resumes(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert gen.main(_args(tiny_pipeline_dir, out, "--prompt", "a red cat", "--seeds", "0", "1",
                          "--ratios", "0", "0.5", "--no-warmup")) == 0
    images = _images(out)
    records = _log_lines(out)
    assert len(images) == 4 and {r["file"] for r in records} == images and len(records) == 4
    for record in records:
        assert LOG_FIELDS <= set(record)
        assert record["steps"] == 1 and (record["width"], record["height"]) == (32, 32) and record["its"] > 0
        assert record["patch_options"] == gen.patch_option_defaults() and record["rank"] == 0
    summary = (out / "summary.md").read_text()
    assert summary in capsys.readouterr().out
    base = statistics.mean(r["its"] for r in records if r["ratio"] == 0)
    merged = statistics.mean(r["its"] for r in records if r["ratio"] == 0.5)
    assert f"| 0 | 2 | {base:.3f} |" in summary and "1.00x |" in summary
    assert f"| 0.5 | 2 | {merged:.3f} |" in summary and f"{merged / base:.2f}x |" in summary

    # Re-running skips everything already written; adding a seed generates only the new images.
    assert gen.main(_args(tiny_pipeline_dir, out, "--prompt", "a red cat", "--seeds", "0", "1",
                          "--ratios", "0", "0.5", "--no-warmup")) == 0
    assert _log_lines(out) == records
    assert gen.main(_args(tiny_pipeline_dir, out, "--prompt", "a red cat", "--seeds", "0", "1", "2",
                          "--ratios", "0", "0.5", "--no-warmup", "--sheet")) == 0
    assert len(_images(out)) == 6 and len(_log_lines(out)) == 6
    assert "| 0 | 3 |" in (out / "summary.md").read_text()
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size == (2 * 160, 3 * (160 + 32))  # 2 ratios x 3 seeds


def test_resuming_with_other_settings_is_refused(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert gen.main(_args(tiny_pipeline_dir, out, "--prompt", "a", "--ratios", "0", "--no-warmup")) == 0
    changed = _args(tiny_pipeline_dir, out, "--prompt", "a", "--ratios", "0", "--no-warmup")
    changed[changed.index("--steps") + 1] = "2"
    assert gen.main(changed) == 2
    assert "steps=1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "no prompt"),
        (("--prompt", "a", "--ratios", "1.5"), "ratio 1.5 is out of range"),
        (("--prompt", "a", "--width", "30"), "width=30 must be a positive multiple of 8"),
        (("--prompts", "missing.txt"), "does not exist"),
    ],
)
def test_bad_input_exits_with_a_message_and_writes_nothing(tiny_pipeline_dir, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as exit_info:
        gen.main(_args(tiny_pipeline_dir, tmp_path / "run", *extra))
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def _start(model: Path, out: Path, *extra: str, launcher: tuple[str, ...] = ()) -> subprocess.Popen:
    command = [sys.executable, *launcher, str(ROOT / "scripts" / "generate.py"), *_args(model, out, *extra)]
    return subprocess.Popen(command, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for_images(out: Path, count: int, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while len(_images(out)) < count:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no image written in time"
        time.sleep(0.05)


def _jobs(*seeds: int) -> tuple[str, ...]:
    return ("--prompt", "a red cat", "--seeds", *map(str, seeds), "--ratios", "0", "0.5", "--no-warmup")


JOBS = _jobs(0, 1)  # 4 images


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGKILL, marks=pytest.mark.slow)],
                         ids=["ctrl-c", "hard-kill"])
def test_interrupted_run_leaves_complete_files_and_resume_finishes_each_image_once(tiny_pipeline_dir, tmp_path, sig):
    out = tmp_path / "run"
    process = _start(tiny_pipeline_dir, out, *JOBS, "--steps", "2")
    _wait_for_images(out, 1, process)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    if sig == signal.SIGINT:
        assert process.returncode == 130, err
        assert "stopping after the current image" in err
    written = _images(out)
    assert 1 <= len(written) < 4 and all(not name.startswith(".") for name in written)
    assert {r["file"] for r in gen.read_logs(out)} == written  # every image has its log line
    assert gen.main(_args(tiny_pipeline_dir, out, *JOBS, "--steps", "2")) == 0
    assert not list(out.glob(".*.partial"))
    records = gen.read_logs(out)
    assert len(_images(out)) == 4 and sorted(r["file"] for r in records) == sorted(_images(out))


# ---------------------------------------------------------------- several processes (accelerate)

ACCELERATE = ("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517")


def test_two_processes_split_the_jobs_and_one_summary_covers_both(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "run"
    process = _start(tiny_pipeline_dir, out, *JOBS, launcher=ACCELERATE)
    stdout, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    records = _log_lines(out)
    assert sorted(r["file"] for r in records) == sorted(_images(out)) and len(records) == 4  # each job once
    assert {r["rank"] for r in records} == {0, 1} and {r["world_size"] for r in records} == {2}
    assert {p.name for p in out.glob("log.rank*.jsonl")} == {"log.rank0.jsonl", "log.rank1.jsonl"}
    summary = (out / "summary.md").read_text()
    assert "4 images" in summary and "process ranks: 0, 1" in summary and summary in stdout
    assert "| 0 | 2 |" in summary and "| 0.5 | 2 |" in summary

    # A single-process re-run with more seeds generates only the new images, next to the old logs.
    assert gen.main(_args(tiny_pipeline_dir, out, *_jobs(0, 1, 2))) == 0
    assert len(gen.read_logs(out)) == 6 and len(_log_lines(out)) == 6


def test_a_log_line_cut_by_a_hard_kill_costs_only_itself(tmp_path):
    log = tmp_path / "log.rank0.jsonl"
    gen.append_log(log, {"file": "a.png", "time": "1"})
    with open(log, "a") as handle:
        handle.write('{"file": "b.png", "ti')  # killed mid-write
    gen.append_log(log, {"file": "c.png", "time": "2"})
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(r["file"] for r in gen.read_logs(tmp_path)) == ["a.png", "c.png"]


def test_a_model_that_cannot_be_loaded_is_reported(tmp_path, capsys):
    assert gen.main(_args(tmp_path / "no-model", tmp_path / "run", "--prompt", "a")) == 2
    assert "not found" in capsys.readouterr().err


def test_a_single_safetensors_model_runs_with_config_and_says_so_without(tiny_pipeline_dir, tmp_path, capsys,
                                                                         empty_hub_cache):
    import ldm_checkpoint
    from safetensors.torch import save_file

    from tomesd.loading import load_pipeline

    path = tmp_path / "community-model.safetensors"
    save_file(ldm_checkpoint.ldm_state_dict(load_pipeline(tiny_pipeline_dir)), str(path))
    assert gen.main(_args(path, tmp_path / "run", "--prompt", "a", "--ratios", "0", "--no-warmup")) == 2
    assert "Pass config= (--config" in capsys.readouterr().err  # offline, nothing cached
    out = tmp_path / "with-config"
    assert gen.main(_args(path, out, "--config", str(tiny_pipeline_dir), "--prompt", "a", "--ratios", "0",
                          "--no-warmup")) == 0
    assert [r["config"] for r in _log_lines(out)] == [str(tiny_pipeline_dir)] and len(_images(out)) == 1
