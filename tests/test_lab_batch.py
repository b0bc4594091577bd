"""tomesd.lab.batch and its command line (``tomesd generate``, ``scripts/generate.py``) end to end on a toy
pipeline folder: prompt files, logs, summary, resume, bad input refused before anything loads, Ctrl-C and hard
kills, and two processes under ``accelerate launch``."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tomesd.cli.generate import main as generate_main
from tomesd.lab import batch
from tomesd.lab.generation import patch_option_defaults

ROOT = Path(__file__).resolve().parents[1]
LOG_FIELDS = {"offload", "attention", "prompt", "negative_prompt", "seed", "ratio", "patch_options", "steps", "width", "height", "seconds",
              "its", "peak_memory_mib", "memory_kind", "device", "dtype", "versions", "rank", "world_size", "file"}


def _args(model: Path, out: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--out", str(out), "--steps", "1", "--width", "32", "--height", "32", *extra]


def _log_lines(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("log.rank*.jsonl")) for line in path.read_text().splitlines()]


def _images(out: Path) -> set[str]:
    return {p.name for p in out.glob("*.png") if p.name != batch.SHEET_FILE}


def _refused(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    """Run the command line expecting argparse's refusal (exit code 2 before anything loads); its message."""
    with pytest.raises(SystemExit) as exit_info:
        generate_main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------- prompt files

@pytest.mark.parametrize(
    "name, text",
    [
        ("p.txt", "# a comment\na red cat\n\na blue dog\n"),
        ("p.csv", "prompt,negative_prompt\na red cat,\na blue dog,blurry\n"),
        ("bom.csv", "\ufeffprompt,negative_prompt\na red cat,\na blue dog,blurry\n"),  # as spreadsheets save it
        ("bom.txt", "\ufeffa red cat\na blue dog\n"),
        ("p.jsonl", '{"prompt": "a red cat"}\n\n{"prompt": "a blue dog", "negative_prompt": "blurry"}\n'),
    ],
)
def test_prompt_files(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    prompts = batch.read_prompts(tmp_path / name)
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
        ("p.jsonl", '{"prompt": 5}\n', "entry 1: 'prompt' must be text, got 5"),
        ("p.jsonl", '{"prompt": "a", "negative_prompt": ["x"]}\n', "entry 1: 'negative_prompt' must be text"),
    ],
)
def test_bad_prompt_files(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=message):
        batch.read_prompts(tmp_path / name)


def test_jobs_put_ratios_innermost_and_names_are_unique():
    jobs = batch.plan_jobs([("a", ""), ("a", "ugly")], [0, 1], [0.0, 0.5])
    assert [(j.seed, j.ratio) for j in jobs[:4]] == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)]
    assert len({j.filename for j in jobs}) == len(jobs) == 8


# ---------------------------------------------------------------- end to end

def test_batch_writes_images_log_and_summary_then_resumes(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert generate_main(_args(tiny_pipeline_dir, out, "--prompt", "a red cat", "--seeds", "0", "1",
                          "--ratios", "0", "0.5", "--no-warmup")) == 0
    images = _images(out)
    records = _log_lines(out)
    assert len(images) == 4 and {r["file"] for r in records} == images and len(records) == 4
    for record in records:
        assert LOG_FIELDS <= set(record)
        assert record["steps"] == 1 and (record["width"], record["height"]) == (32, 32) and record["its"] > 0
        assert record["patch_options"] == patch_option_defaults() and record["rank"] == 0
    summary = (out / "summary.md").read_text()
    assert summary in capsys.readouterr().out
    base = statistics.mean(r["its"] for r in records if r["ratio"] == 0)
    merged = statistics.mean(r["its"] for r in records if r["ratio"] == 0.5)
    assert f"| 0 | 2 | {base:.3f} |" in summary and "1.00x |" in summary
    assert f"| 0.5 | 2 | {merged:.3f} |" in summary and f"{merged / base:.2f}x |" in summary

    # Re-running skips everything already written; adding a seed generates only the new images.
    assert generate_main(_args(tiny_pipeline_dir, out, "--prompt", "a red cat", "--seeds", "0", "1",
                          "--ratios", "0", "0.5", "--no-warmup")) == 0
    assert _log_lines(out) == records
    assert generate_main(_args(tiny_pipeline_dir, out, "--prompt", "a red cat", "--seeds", "0", "1", "2",
                          "--ratios", "0", "0.5", "--no-warmup", "--sheet")) == 0
    assert len(_images(out)) == 6 and len(_log_lines(out)) == 6
    assert "| 0 | 3 |" in (out / "summary.md").read_text()
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size == (2 * 160, 3 * (160 + 32))  # 2 ratios x 3 seeds


def test_the_log_and_summary_give_the_effective_ratio_where_the_strides_cap_it(tiny_pipeline_dir, tmp_path, capsys):
    """At sx=sy=2, ratio 0.9 merges 0.75 of the tokens (the same image as 0.75): every log line says so and the
    summary shows it in an "effective ratio" column; 0.5 is uncapped (exact on the toy U-Net's even grids)."""
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="ratio=0.9 is more than"):  # the apply-time warning stays
        assert generate_main(_args(tiny_pipeline_dir, out, "--prompt", "a red cat", "--ratios", "0", "0.5", "0.9",
                                   "--min-tokens", "0", "--no-warmup")) == 0
    assert {r["ratio"]: r["effective_ratio"] for r in _log_lines(out)} == {0.0: 0.0, 0.5: 0.5, 0.9: 0.75}
    summary = (out / "summary.md").read_text()
    rows = {line.split("|")[1].strip(): line for line in summary.splitlines() if line.startswith("| 0")}
    assert "effective ratio |" in summary
    assert rows["0.9"].endswith("| 0.75 |") and rows["0.5"].endswith("| 0.5 |") and rows["0"].endswith("| 0 |")


def test_resuming_with_other_settings_is_refused(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert generate_main(_args(tiny_pipeline_dir, out, "--prompt", "a", "--ratios", "0", "--no-warmup")) == 0
    changed = _args(tiny_pipeline_dir, out, "--prompt", "a", "--ratios", "0", "--no-warmup")
    changed[changed.index("--steps") + 1] = "2"
    assert generate_main(changed) == 2
    assert "steps=1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        ((), "no prompt"),
        (("--prompt", "a", "--ratios", "1.5"), "ratio 1.5 is out of range"),
        (("--prompt", "a", "--width", "30"), "width=30 must be a positive multiple of 8"),
        (("--prompts", "missing.txt"), "does not exist"),
        # given values are checked as given, never replaced by the model's defaults
        (("--prompt", "a", "--steps", "0"), "steps=0 is out of range"),
        (("--prompt", "a", "--width", "0"), "width=0 must be a positive multiple of 8"),
        (("--prompt", "a", "--height", "0"), "height=0 must be a positive multiple of 8"),
        (("--prompt", "a", "--guidance", "-1"), "guidance=-1.0 is negative"),
        # checked before the model loads, not by the first generation
        (("--prompt", "   "), "the prompt is empty"),
        (("--prompt", "a", "--device", "bogus"), "unknown device 'bogus'; accepted: cpu, cuda"),
        (("--prompt", "a", "--device", "meta"), "pipelines run on cpu, cuda, mps, xpu, not meta"),
        (("--prompt", "a", "--sx", "0"), "sx must be a positive integer; got 0"),
        (("--prompt", "a", "--matching", "best"), "matching must be one of 'global', 'local'; got 'best'"),
        (("--prompt", "a", "--seeds", str(2**64)), f"seed {2**64} is out of range"),
        (("--prompt", "a", "--threads", "0"), "threads=0 must be at least 1"),
    ],
)
def test_bad_input_exits_with_a_message_and_writes_nothing(tiny_pipeline_dir, tmp_path, capsys, extra, message):
    assert message in _refused(_args(tiny_pipeline_dir, tmp_path / "run", *extra), capsys)
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_loading(tmp_path, capsys):
    message = _refused(_args("demo", tmp_path / "run", "--prompt", "a", "--device", "cuda:1"), capsys)
    assert "device 'cuda:1' is not available on this machine" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, content, message", [
    ("renamed-pickle.safetensors", None, "is not a valid safetensors file"),
    ("passwd", b"root:x:0:0:root:/root:/bin/bash\n", "is not a .safetensors file"),
    ("folder", "dir", "is a folder but not a diffusers pipeline"),
])
def test_a_model_that_cannot_load_is_refused_before_anything_is_written(tmp_path, capsys, name, content, message):
    import pickle

    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    else:
        path.write_bytes(pickle.dumps({"state_dict": [1, 2, 3]}) if content is None else content)
    assert message in _refused(_args(path, tmp_path / "run", "--prompt", "a"), capsys)
    assert not (tmp_path / "run").exists()


def test_a_refused_run_leaves_no_settings_behind_and_an_empty_folder_never_refuses(tiny_pipeline_dir, tmp_path):
    """run.json appears with the first image; one left in a folder without images (by an older version's
    refused run) is stale and replaced, whatever settings it names."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"guidance": 7.5, "steps": 50, "patch_options": {"sx": 0}}))
    assert generate_main(_args(tiny_pipeline_dir, out, "--prompt", "a", "--ratios", "0", "--no-warmup",
                               "--guidance", "3")) == 0
    recorded = json.loads((out / "run.json").read_text())
    assert recorded["guidance"] == 3.0 and recorded["steps"] == 1 and recorded["patch_options"]["sx"] == 2
    assert len(_images(out)) == 1


def test_a_model_the_patch_refuses_fails_before_the_first_image(tiny_pipeline_dir, tmp_path, capsys):
    """A U-Net without transformer blocks loads, but cannot be patched: the refusal comes before the ratio-0
    image, so the folder is left without images or run.json and a later correct run can use it."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type=None, cross_attention_dim=32,
    )
    pipe.save_pretrained(tmp_path / "no-attention", safe_serialization=True)
    out = tmp_path / "run"
    assert generate_main(_args(tmp_path / "no-attention", out, "--prompt", "a", "--ratios", "0", "0.5",
                               "--no-warmup")) == 2
    assert "has no BasicTransformerBlock to merge tokens in" in capsys.readouterr().err
    assert not _images(out) and not (out / "run.json").exists()
    assert generate_main(_args(tiny_pipeline_dir, out, "--prompt", "a", "--ratios", "0", "--no-warmup")) == 0


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
    assert {r["file"] for r in batch.read_logs(out)} == written  # every image has its log line
    assert generate_main(_args(tiny_pipeline_dir, out, *JOBS, "--steps", "2")) == 0
    assert not list(out.glob(".*.partial"))
    records = batch.read_logs(out)
    assert len(_images(out)) == 4 and sorted(r["file"] for r in records) == sorted(_images(out))


# ---------------------------------------------------------------- several processes (accelerate)

def _accelerate(processes: int = 2) -> tuple[str, ...]:
    """``accelerate launch`` for ``processes`` CPU processes over gloo (``--multi_gpu`` picks its torchrun
    launcher; without a GPU the script runs each process on the CPU), on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return ("-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port))


DEMO_PROMPTS = '{"prompt": "a red circle"}\n{"prompt": "a large blue square", "negative_prompt": "blurry"}\n'


def _demo_jobs(prompts: Path, *seeds: int) -> tuple[str, ...]:
    """Jobs on the embedded demo model at tiny settings (2 steps, 64x64, one thread per process, as the launched
    processes have): 2 prompts x seeds x ratios 0, 0.5."""
    return ("--prompts", str(prompts), "--seeds", *map(str, seeds), "--ratios", "0", "0.5", "--no-warmup",
            "--steps", "2", "--width", "64", "--height", "64", "--threads", "1")


def _expected_files(*seeds: int) -> set[str]:
    prompts = [("a red circle", ""), ("a large blue square", "blurry")]
    return {job.filename for job in batch.plan_jobs(prompts, seeds, [0.0, 0.5])}


def _check_every_image_logged_once(out: Path, expected: set[str]) -> list[dict]:
    """Exactly the expected images, no temporary file, and one valid log record per image."""
    assert _images(out) == expected and not list(out.glob(".*.partial"))
    records = batch.read_logs(out)
    assert sorted(r["file"] for r in records) == sorted(expected)
    return records


def _check_summary(out: Path, records: list[dict]) -> None:
    """summary.md's rows are the per-ratio counts and mean it/s of ``records``."""
    summary = (out / "summary.md").read_text()
    assert f"{len(records)} images" in summary
    base = statistics.mean(r["its"] for r in records if r["ratio"] == 0)
    for ratio in (0.0, 0.5):
        its = [r["its"] for r in records if r["ratio"] == ratio]
        assert f"| {ratio:g} | {len(its)} | {statistics.mean(its):.3f} |" in summary
        assert f"{statistics.mean(its) / base:.2f}x |" in summary


def test_demo_model_resumes_across_process_counts_doing_every_job_once(tmp_path):
    """1 process writes part, 2 processes (accelerate) finish it, 1 process adds a seed: nothing redone,
    nothing missing, each image written by exactly one process, one summary over all of them."""
    (tmp_path / "p.jsonl").write_text(DEMO_PROMPTS)
    out = tmp_path / "run"
    assert generate_main(_args("demo", out, *_demo_jobs(tmp_path / "p.jsonl", 0))) == 0
    first = {r["file"]: r for r in _check_every_image_logged_once(out, _expected_files(0))}
    mtimes = {name: (out / name).stat().st_mtime_ns for name in first}

    process = _start("demo", out, *_demo_jobs(tmp_path / "p.jsonl", 0, 1, 2), launcher=_accelerate(2))
    stdout, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    assert "12 images planned, 4 already written, 8 to generate on 2 process(es)" in err
    records = _check_every_image_logged_once(out, _expected_files(0, 1, 2))
    lines = _log_lines(out)
    assert len(lines) == 12 and len({r["file"] for r in lines}) == 12  # no image logged (so written) twice
    assert all(first[name] in lines and (out / name).stat().st_mtime_ns == mtimes[name] for name in first)
    new = [r for r in records if r["file"] not in first]
    assert sorted(r["rank"] for r in new) == [0] * 4 + [1] * 4 and {r["world_size"] for r in new} == {2}
    assert {p.name for p in out.glob("log.rank*.jsonl")} == {"log.rank0.jsonl", "log.rank1.jsonl"}
    assert all(r["model"] == "demo" and r["steps"] == 2 and (r["width"], r["height"]) == (64, 64) for r in records)
    _check_summary(out, records)
    summary = (out / "summary.md").read_text()
    assert "process ranks: 0, 1" in summary and summary in stdout

    assert generate_main(_args("demo", out, *_demo_jobs(tmp_path / "p.jsonl", 0, 1, 2, 3))) == 0
    records = _check_every_image_logged_once(out, _expected_files(0, 1, 2, 3))
    assert len(_log_lines(out)) == 16
    _check_summary(out, records)


@pytest.mark.parametrize("sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)],
                         ids=["ctrl-c", "kill"])
def test_demo_model_two_processes_killed_then_resumed_write_every_image_once(tmp_path, sig):
    """The launcher is stopped mid-run as a user would (Ctrl-C reaches only the launcher, which forwards it;
    ``kill PID`` sends SIGTERM): no worker outlives it, and a 2-process re-run completes the batch."""
    import psutil

    (tmp_path / "p.jsonl").write_text(DEMO_PROMPTS)
    out, jobs = tmp_path / "run", _demo_jobs(tmp_path / "p.jsonl", *range(8))  # 32 images
    process = _start("demo", out, *jobs, launcher=_accelerate(2))
    _wait_for_images(out, 2, process)
    workers = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(sig)
    stdout, err = process.communicate(timeout=120)
    assert process.returncode != 0
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, f"workers outlived the launcher: {alive}"
    if sig == signal.SIGINT:  # each worker finished its image in progress; the main one summarised them
        assert "stopping after the current image" in err and "images; devices: cpu" in stdout
    written = _images(out)
    assert 2 <= len(written) < 32 and {r["file"] for r in batch.read_logs(out)} == written
    stamps = {name: (out / name).stat().st_mtime_ns for name in written}

    process = _start("demo", out, *jobs, launcher=_accelerate(2))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    records = _check_every_image_logged_once(out, _expected_files(*range(8)))
    assert all((out / name).stat().st_mtime_ns == stamp for name, stamp in stamps.items())  # none redone
    assert {r["rank"] for r in records} == {0, 1}
    _check_summary(out, records)


def test_a_log_line_cut_by_a_hard_kill_costs_only_itself(tmp_path):
    log = tmp_path / "log.rank0.jsonl"
    batch.append_log(log, {"file": "a.png", "time": "1"})
    with open(log, "a") as handle:
        handle.write('{"file": "b.png", "ti')  # killed mid-write
    batch.append_log(log, {"file": "c.png", "time": "2"})
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / name).write_bytes(b"")
    assert sorted(r["file"] for r in batch.read_logs(tmp_path)) == ["a.png", "c.png"]


def test_a_model_that_cannot_be_loaded_is_reported(tmp_path, capsys):
    assert "not found" in _refused(_args(tmp_path / "no-model", tmp_path / "run", "--prompt", "a"), capsys)
    assert not (tmp_path / "run").exists()


def test_a_single_safetensors_model_runs_with_config_and_says_so_without(tiny_pipeline_dir, tmp_path, capsys,
                                                                         empty_hub_cache):
    import ldm_checkpoint
    from safetensors.torch import save_file

    from tomesd.lab.loading import load_pipeline

    path = tmp_path / "community-model.safetensors"
    save_file(ldm_checkpoint.ldm_state_dict(load_pipeline(tiny_pipeline_dir)), str(path))
    assert generate_main(_args(path, tmp_path / "run", "--prompt", "a", "--ratios", "0", "--no-warmup")) == 2
    assert "Pass config= (--config" in capsys.readouterr().err  # offline, nothing cached
    out = tmp_path / "with-config"
    assert generate_main(_args(path, out, "--config", str(tiny_pipeline_dir), "--prompt", "a", "--ratios", "0",
                          "--no-warmup")) == 0
    assert [r["config"] for r in _log_lines(out)] == [str(tiny_pipeline_dir)] and len(_images(out)) == 1


@pytest.mark.parametrize("extra, message", [(("--offload", "model"), "offload='model' needs a GPU device, not 'cpu'"),
                                            (("--attention", "xformers"), "attention='xformers' needs a GPU")])
def test_gpu_only_placement_on_the_cpu_is_refused_before_anything_is_written(tmp_path, capsys, extra, message):
    assert message in _refused(_args("demo", tmp_path / "run", "--prompt", "a", "--device", "cpu", *extra), capsys)
    assert not (tmp_path / "run").exists()
