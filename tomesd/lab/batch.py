"""The batch engine behind ``tomesd generate``: token-merged generations with a per-image speed log.

Every prompt x seed x ratio is one image (a video pipeline's: one animated GIF of its frames). Images go to
``--out`` with a JSON line per image in
``log.rank<N>.jsonl`` (prompt, seed, ratio and the effective ratio really merged, patch options, steps, size, seconds, it/s, peak memory,
device, dtype, library versions, process rank; with ``compile``, the backend and the compile time of its
ratio), and a per-ratio summary is printed and written to ``summary.md``. Re-running the same command skips images already written (resume); Ctrl-C finishes the
image in progress and stops (a second Ctrl-C stops at once), leaving only complete images and log lines.
Everything is checked before the model loads or ``--out`` is touched (:func:`plan_batch`), and ``run.json``,
which locks the folder to the run's settings, is written with the first image: a refused run leaves no trace.

Runs unchanged under ``accelerate launch --num_processes N scripts/generate.py ...``: the pending jobs are
split across the processes, each on its own device, and the summary covers all of them.

Example::

    tomesd generate --prompts prompts.txt --seeds 0 1 --ratios 0 0.5 --out runs/demo
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import signal
import statistics
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

import tomesd
from tomesd.lab.generation import (
    GenerationSettings, call_arguments, check_compile_backend, check_patch_options, check_ratio, effective_ratio,
    generate, is_video_pipeline, ratio_label, set_ratio, unpatch, warm_up,
)
from tomesd.lab.loading import DEMO, check_placement, check_source, default_settings, load_pipeline, parse_dtype
from tomesd.lab.timing import execution_device

__all__ = ["Batch", "Job", "plan_batch", "read_logs", "read_prompts", "run_batch", "summarise", "write_summary"]

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.md"
SHEET_FILE = "sheet.png"
LOG_GLOB = "log.rank*.jsonl"
IMAGE_SUFFIX, VIDEO_SUFFIX = ".png", ".gif"  # an image pipeline's image; a video pipeline's frames, animated
DEFAULT_FPS = 8


@dataclass(frozen=True)
class Job:
    """One image to generate."""

    prompt: str
    negative_prompt: str
    seed: int
    ratio: float

    @property
    def stem(self) -> str:
        """A name unique to prompt, negative prompt, seed and ratio, readable at a glance (no suffix)."""
        digest = hashlib.sha1(f"{self.prompt}\0{self.negative_prompt}".encode()).hexdigest()[:8]
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40] or "prompt"
        return f"{slug}-{digest}_seed{self.seed}_ratio{self.ratio:g}"

    @property
    def filename(self) -> str:
        """The image's file name."""
        return self.stem + IMAGE_SUFFIX

    def output_name(self, video: bool) -> str:
        """The file name of this job's output: its image, or (``video``) the GIF of its frames."""
        return self.stem + (VIDEO_SUFFIX if video else IMAGE_SUFFIX)

    def is_written(self, out: Path) -> bool:
        """Whether ``out`` holds this job's output, image or video (known before the model loads)."""
        return any((out / (self.stem + suffix)).is_file() for suffix in (IMAGE_SUFFIX, VIDEO_SUFFIX))


# ---------------------------------------------------------------- inputs

def read_prompts(path: Path) -> list[tuple[str, str]]:
    """(prompt, negative prompt) pairs from a ``.txt`` (one prompt a line; blank lines and ``#`` comments
    skipped), ``.csv`` (columns ``prompt`` and optionally ``negative_prompt``) or ``.jsonl`` file (objects
    with ``prompt`` and optionally ``negative_prompt``).

    Raises:
        ValueError: unknown extension, a missing ``prompt`` field, or no prompt at all.
    """
    if not path.is_file():
        raise ValueError(f"prompt file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8-sig")  # spreadsheets often start a CSV with a byte-order mark
    if suffix == ".txt":
        rows = [{"prompt": line.strip()} for line in text.splitlines() if line.strip() and not line.startswith("#")]
    elif suffix == ".csv":
        rows = list(csv.DictReader(text.splitlines()))
    elif suffix == ".jsonl":
        rows = [_json_line(line, path, number) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    else:
        raise ValueError(f"prompt file {str(path)!r}: unknown extension {suffix!r}; accepted: .txt, .csv, .jsonl")
    prompts = []
    for number, row in enumerate(rows, 1):
        prompt, negative = (_text_field(row, name, path, number) for name in ("prompt", "negative_prompt"))
        if not prompt:
            raise ValueError(f"prompt file {str(path)!r}, entry {number}: no 'prompt' (or it is empty)")
        prompts.append((prompt, negative))
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} contains no prompt")
    return prompts


def _text_field(row: Mapping[str, Any], name: str, path: Path, number: int) -> str:
    """Entry ``number``'s field ``name``, stripped ("" when absent), or a ValueError if it is not text."""
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"prompt file {str(path)!r}, entry {number}: {name!r} must be text, got {value!r}")
    return value.strip()


def _json_line(line: str, path: Path, number: int) -> dict[str, Any]:
    """One JSONL object, or a ValueError naming the line."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise ValueError(f"prompt file {str(path)!r}, line {number}: not JSON ({error})") from None
    if not isinstance(row, dict):
        raise ValueError(f"prompt file {str(path)!r}, line {number}: expected an object like {{\"prompt\": ...}}")
    return row


def plan_jobs(prompts: list[tuple[str, str]], seeds: Iterable[int], ratios: Iterable[float]) -> list[Job]:
    """All jobs, ratios innermost, so that the ratios of one image are generated in turns (fair timing)."""
    return [Job(prompt, negative, seed, ratio) for prompt, negative in prompts for seed in seeds for ratio in ratios]


def finished_images(out: Path) -> list[Path]:
    """The images (and videos) of finished jobs in ``out`` (not the contact sheet, not a ``.partial`` file)."""
    return [path for suffix in (IMAGE_SUFFIX, VIDEO_SUFFIX) for path in out.glob(f"*{suffix}") if path.name != SHEET_FILE]


def check_run_config(out: Path, config: Mapping[str, Any]) -> None:
    """Make sure ``out`` only ever holds images of one setting: refuse a re-run (resume) with settings other
    than those in ``run.json``, when the folder holds images. A folder without images never refuses a run
    (a ``run.json`` there is stale: the first image of this run replaces it, see :func:`record_run_config`).

    Raises:
        ValueError: ``out`` holds images made with other settings (names the first differing one).
    """
    path = out / RUN_FILE
    if not path.is_file() or not finished_images(out):
        return
    previous = json.loads(path.read_text())
    for key in sorted(set(previous) | set(config)):
        if previous.get(key) != config.get(key):
            raise ValueError(
                f"{str(out)!r} holds images made with {key}={previous.get(key)!r}, but this run has "
                f"{key}={config.get(key)!r}; use another --out, or the same settings to resume"
            )


def record_run_config(out: Path, config: Mapping[str, Any]) -> None:
    """Write ``run.json``: done just before a run's first image appears, so that a folder holds images only
    beside the settings they were made with (every process writes the same bytes, atomically)."""
    _write_atomically(out / RUN_FILE, json.dumps(config, indent=2, sort_keys=True).encode())


# ---------------------------------------------------------------- planning

@dataclass(frozen=True)
class Batch:
    """A checked batch: what to generate (``jobs``), the settings ``run.json`` records (``config``) and how to
    run it. Made by :func:`plan_batch`, run by :func:`run_batch`."""

    jobs: list[Job]
    config: dict[str, Any]
    out: Path
    device: str | None = None
    offload: str = "none"
    attention: str = "sdpa"
    threads: int | None = None
    warmup: bool = True
    sheet: bool = False
    fps: int = DEFAULT_FPS

    @property
    def placement(self) -> dict[str, str]:
        """How the weights are placed: what :func:`tomesd.lab.loading.load_pipeline` and the log take."""
        return {"offload": self.offload, "attention": self.attention}


def plan_batch(
    prompts: Sequence[tuple[str, str]],
    out: str | Path,
    *,
    seeds: Iterable[int] = (0,),
    ratios: Iterable[float] = (0.0, 0.5),
    model: str = DEMO,
    config: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    dtype: str = "float32",
    device: str | None = None,
    offload: str = "none",
    attention: str = "sdpa",
    threads: int | None = None,
    patch_options: Mapping[str, Any] | None = None,
    warmup: bool = True,
    sheet: bool = False,
    frames: int | None = None,
    image: str | Path | None = None,
    fps: int = DEFAULT_FPS,
    compile: str | None = None,
) -> Batch:
    """Check every input of a batch, without loading the model or touching ``out``.

    Args:
        prompts: (prompt, negative prompt) pairs, e.g. from :func:`read_prompts`.
        out: the output folder.
        seeds: one image per seed (and prompt and ratio); duplicates are dropped.
        ratios: merge ratios, each in [0, 1); 0 is the baseline of the speedups.
        model: a model source (see :func:`tomesd.lab.loading.load_pipeline`); ``config`` for a single file.
        steps, guidance, width, height: the generation settings; None takes the model's usual
            (:func:`tomesd.lab.loading.default_settings`), any number given is checked as given.
        dtype: "float32", "float16" or "bfloat16".
        device: e.g. "cpu", "cuda:0"; None lets accelerate choose per process.
        offload, attention: see :func:`tomesd.lab.loading.load_pipeline`.
        threads: torch CPU threads (None: torch's default).
        patch_options: the diffusers patch options besides the ratio (their defaults when absent).
        warmup: an untimed 1-step generation per ratio first.
        sheet: also write a contact sheet of every image.
        frames: for a video pipeline, the frames of each video (None: the pipeline's default).
        image: for an image-to-video pipeline (Stable Video Diffusion), the conditioning image's path.
        fps: frames per second of the GIFs a video pipeline's frames are written as.
        compile: a ``torch.compile`` backend ("inductor", "eager"...) to compile the denoiser with, after
            patching it at each ratio; needs the warm-up (:func:`tomesd.lab.generation.warm_up`), whose time
            is then each ratio's compile time.

    Returns:
        A :class:`Batch`, jobs ordered with ratios innermost.

    Raises:
        ValueError: no prompt or a blank one, a bad seed, ratio, setting, dtype, device, placement, thread
            count, patch option, model source, frame count, image, fps or compile backend, or compiling
            without the warm-up.
    """
    if not prompts:
        raise ValueError("no prompt: give --prompt TEXT or --prompts FILE")
    if threads is not None and threads < 1:
        raise ValueError(f"threads={threads} must be at least 1")
    if int(fps) != fps or fps < 1:
        raise ValueError(f"fps={fps} must be a positive integer")
    check_compile_backend(compile)
    if compile is not None and not warmup:
        raise ValueError("compiling needs the warm-up: the first generation at each ratio compiles (its time is the "
                         "compile time, reported apart); drop --no-warmup")
    seeds = list(dict.fromkeys(int(seed) for seed in seeds))
    for seed in seeds:
        _check_seed(seed)
    ratios = sorted({check_ratio(ratio) for ratio in ratios})
    parse_dtype(dtype)
    if device is not None:
        check_placement(device, offload, attention)
    model = check_source(model, config)
    defaults = default_settings(model)
    run_config = {
        "model": model,
        "config": config,
        "steps": defaults["steps"] if steps is None else steps,
        "guidance": defaults["guidance"] if guidance is None else guidance,
        "width": defaults["size"] if width is None else width,
        "height": defaults["size"] if height is None else height,
        "dtype": dtype,
        "patch_options": check_patch_options(patch_options or {}, ratios),
        "frames": defaults.get("frames") if frames is None else frames,
        "image": None if image is None else str(Path(image).expanduser().resolve()),
        "compile": compile,
    }
    jobs = plan_jobs(list(prompts), seeds, ratios)
    for job in jobs:  # a blank prompt or a bad setting is refused here, not after the model has loaded
        _settings(run_config, job)
    return Batch(jobs, run_config, Path(out), device, offload, attention, threads, warmup, sheet, int(fps))


def _check_seed(seed: int) -> None:
    """Refuse a seed torch's generator cannot take."""
    try:
        torch.Generator("cpu").manual_seed(seed)
    except (RuntimeError, ValueError):
        raise ValueError(f"seed {seed} is out of range; accepted: -2**63 to 2**64 - 1") from None


def _settings(config: Mapping[str, Any], job: Job) -> GenerationSettings:
    """The generation settings of ``job`` under ``config``."""
    return GenerationSettings(job.prompt, job.negative_prompt, config["steps"], config["guidance"],
                              config["width"], config["height"], config.get("frames"), config.get("image"))


# ---------------------------------------------------------------- outputs

def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file, then rename it: readers see nothing or everything."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def append_log(path: Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line, in one write, flushed to disk. A line cut short by a hard kill is
    terminated first, so it stays the only unreadable one."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    with open(path, "a+b") as log:
        if log.tell() > 0:
            log.seek(-1, os.SEEK_END)
            if log.read(1) != b"\n":
                line = b"\n" + line
        log.write(line)
        log.flush()
        os.fsync(log.fileno())


def read_logs(out: Path) -> list[dict[str, Any]]:
    """Every process's log records whose image exists, the newest per image (a job re-run after an
    interruption between log and rename is logged twice). Incomplete lines (a hard kill) are skipped."""
    records: dict[str, dict[str, Any]] = {}
    for path in sorted(out.glob(LOG_GLOB)):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if (out / record["file"]).is_file() and record["time"] >= records.get(record["file"], {}).get("time", ""):
                records[record["file"]] = record
    return list(records.values())


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per ratio: images, mean it/s, mean seconds, speedup (mean it/s over ratio 0's mean it/s), the effective
    ratio its log lines give (None for logs written before it was logged) and, for a compiled run, the mean
    compile time (each process compiles once per ratio; None when not compiled)."""
    by_ratio: dict[float, list[dict[str, Any]]] = {}
    for record in records:
        by_ratio.setdefault(record["ratio"], []).append(record)
    base = statistics.mean(r["its"] for r in by_ratio[0.0]) if 0.0 in by_ratio else None
    rows = []
    for ratio in sorted(by_ratio):
        its = statistics.mean(r["its"] for r in by_ratio[ratio])
        compile_times = [r["compile_seconds"] for r in by_ratio[ratio] if r.get("compile_seconds") is not None]
        effective = [r["effective_ratio"] for r in by_ratio[ratio] if r.get("effective_ratio") is not None]
        rows.append({
            "ratio": ratio,
            "images": len(by_ratio[ratio]),
            "mean_its": its,
            "mean_seconds": statistics.mean(r["seconds"] for r in by_ratio[ratio]),
            "speedup": its / base if base else None,
            "compile_seconds": statistics.mean(compile_times) if compile_times else None,
            "effective_ratio": statistics.mean(effective) if effective else None,
        })
    return rows


def summary_markdown(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, with the devices and processes it covers; where a ratio merges less
    than asked (the strides cap it, or no block merges), an "effective ratio" column says how much."""
    devices = sorted({r["device"] for r in records})
    ranks = sorted({r["rank"] for r in records})
    backends = sorted({r["compile"] for r in records if r.get("compile")})
    compiled = any(row["compile_seconds"] is not None for row in rows)
    capped = any(ratio_label(row["ratio"], row["effective_ratio"]) != f"{row['ratio']:g}" for row in rows)
    lines = [
        f"{len(records)} images; devices: {', '.join(devices)}; process ranks: {', '.join(map(str, ranks))}"
        + (f"; denoiser compiled with torch.compile(backend={', '.join(backends)}), it/s without the compile time"
           if backends else ""),
        "",
        "| ratio | images | mean it/s | mean seconds | speedup vs ratio 0 |" + (" compile (s) |" if compiled else "")
        + (" effective ratio |" if capped else ""),
        "| ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if compiled else "") + (" ---: |" if capped else ""),
    ]
    for row in rows:
        speedup = "n/a" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        line = f"| {row['ratio']:g} | {row['images']} | {row['mean_its']:.3f} | {row['mean_seconds']:.2f} | {speedup} |"
        if compiled:
            line += " n/a |" if row["compile_seconds"] is None else f" {row['compile_seconds']:.2f} |"
        if capped:
            line += " n/a |" if row["effective_ratio"] is None else f" {row['effective_ratio']:.3g} |"
        lines.append(line)
    if capped:
        lines += ["", "effective ratio: the share of tokens really merged (tokens-weighted over the merging blocks); "
                      "below the ratio where the strides allow less (at most 1 - 1/(sx*sy)) or no block merges"]
    if compiled:
        lines += ["", "compile (s): the untimed warm-ups at that ratio, in which the denoiser compiles (compile time "
                      "plus one whole and one 1-step generation), mean over processes"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- running

class StopOnInterrupt:
    """First Ctrl-C: finish the current image, then stop. Second: stop at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after the current image (Ctrl-C again to stop now)", file=sys.stderr)

    def restore(self) -> None:
        """Put the previous SIGINT handler back."""
        signal.signal(signal.SIGINT, self._previous)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a speed figure depends on."""
    import accelerate
    import diffusers
    import transformers

    return {
        "tomesd": tomesd.__version__,
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def log_record(job: Job, generation: Any, config: dict[str, Any], device: torch.device, rank: int,
               world_size: int, versions: dict[str, str], placement: dict[str, str], file: str | None = None,
               compile_seconds: float | None = None, effective: float | None = None) -> dict[str, Any]:
    """The log line of one image (``file``: its name, the job's image name by default; ``compile_seconds``:
    this process's compile time at the job's ratio, when compiled; ``effective``: the share of tokens really
    merged at the job's ratio, :func:`tomesd.lab.generation.effective_ratio`)."""
    return {
        "file": file or job.filename,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "ratio": job.ratio,
        "effective_ratio": None if effective is None else round(effective, 4),
        "patch_options": config["patch_options"],
        "steps": config["steps"],
        "guidance": config["guidance"],
        "width": config["width"],
        "height": config["height"],
        "model": config["model"],
        "config": config["config"],
        "seconds": round(generation.run.seconds, 4),
        "denoise_seconds": round(generation.run.denoise_seconds, 4),
        "its": round(generation.run.its, 4),
        "peak_memory_mib": round(generation.peak_mib, 1),
        "memory_kind": generation.memory_kind,
        "device": str(device),
        "dtype": config["dtype"],
        "frames": None if generation.frames is None else len(generation.frames),
        "compile": config.get("compile"),
        "compile_seconds": None if compile_seconds is None else round(compile_seconds, 4),
        **placement,
        "torch_threads": torch.get_num_threads(),
        "rank": rank,
        "world_size": world_size,
        "versions": versions,
        "time": datetime.now(timezone.utc).isoformat(),
    }


def check_patch(pipe: Any, ratios: Iterable[float], options: Mapping[str, Any]) -> None:
    """Apply and remove the patch at every ratio once, so a refusal that depends on the model (e.g. no block
    to merge, a model the patch does not support yet) comes before the first image, not between two.

    Raises:
        ValueError, TypeError: from :func:`tomesd.apply_patch`, the message naming the ratio.
    """
    try:
        for ratio in ratios:
            try:
                set_ratio(pipe, ratio, options)
            except (ValueError, TypeError) as error:
                raise type(error)(f"cannot merge tokens at ratio {ratio:g}: {error} (ratio 0 runs the "
                                  f"{type(pipe).__name__} unpatched)") from None
    finally:
        tomesd.remove_patch(pipe)


def save_output(generation: Any, path: Path, fps: int) -> None:
    """Write ``generation`` to ``path``: a PNG image, or a video's frames as an animated GIF (looping, ``fps``
    frames per second)."""
    if generation.frames is None:
        generation.image.save(path, format="PNG")
    else:
        first, *rest = generation.frames
        first.save(path, format="GIF", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0)


def run_jobs(pipe: Any, jobs: list[Job], batch: Batch, rank: int, world_size: int, stop: StopOnInterrupt) -> int:
    """Generate ``jobs`` in order, each image written atomically after its log line (and ``run.json`` before
    the first). Returns how many were done."""
    from tqdm.auto import tqdm

    config, out = batch.config, batch.out
    device, versions, options = execution_device(pipe), library_versions(), config["patch_options"]
    log_path = out / f"log.rank{rank}.jsonl"
    ratios = sorted({job.ratio for job in jobs})
    video = is_video_pipeline(pipe)
    if jobs:
        call_arguments(pipe, _settings(config, jobs[0]))  # a setting this pipeline cannot take: refused now
    check_patch(pipe, ratios, options)
    effective = {ratio: effective_ratio(pipe, _settings(config, jobs[0]), ratio, options) for ratio in ratios} if jobs else {}
    compile_seconds = {}
    if batch.warmup and jobs:
        compile_seconds = warm_up(pipe, _settings(config, jobs[0]), jobs[0].seed, ratios, options, config["compile"])
        compile_seconds = compile_seconds if config["compile"] else {}
    done = 0
    bar = tqdm(jobs, desc=f"rank {rank}" if world_size > 1 else "images", position=rank)
    try:
        for job in bar:
            if stop.requested:
                break
            generation = generate(pipe, _settings(config, job), job.seed, job.ratio, options,
                                  compile=config.get("compile"))
            name = job.output_name(video)
            tmp = out / f".{name}.partial"  # not *.png / *.gif: never mistaken for a finished image
            save_output(generation, tmp, batch.fps)
            append_log(log_path, log_record(job, generation, config, device, rank, world_size, versions,
                                            batch.placement, name, compile_seconds.get(job.ratio),
                                            effective[job.ratio]))
            if done == 0:
                record_run_config(out, config)
            os.replace(tmp, out / name)
            done += 1
            bar.set_postfix(ratio=ratio_label(job.ratio, effective[job.ratio]), its=f"{generation.run.its:.2f}")
    except KeyboardInterrupt:  # second Ctrl-C: the current image is abandoned; the next run removes its .partial
        stop.requested = True
    finally:
        bar.close()
        unpatch(pipe)
    return done


def prepare_output(state: Any, out: Path, config: dict[str, Any], jobs: list[Job]) -> list[Job]:
    """Create ``out``, check its settings, and return the jobs whose image is not there yet (the same list in
    every process).

    Raises:
        ValueError: ``out`` holds images made with other settings.
    """
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.partial"):  # left by a hard kill; its job is still pending
            stale.unlink()
    state.wait_for_everyone()
    check_run_config(out, config)
    pending = [job for job in jobs if not job.is_written(out)]
    state.wait_for_everyone()  # every process has listed the pending jobs before any is written
    if state.is_main_process:
        print(f"{len(jobs)} images planned, {len(jobs) - len(pending)} already written, {len(pending)} to "
              f"generate on {state.num_processes} process(es)", file=sys.stderr)
    return pending


def generate_share(batch: Batch, jobs: list[Job], state: Any, stop: StopOnInterrupt) -> int:
    """Load the model on this process's device and generate this process's ``jobs``; returns how many."""
    if not jobs:
        return 0
    config = batch.config
    pipe = load_pipeline(config["model"], device=batch.device or state.device, dtype=config["dtype"],
                         config=config["config"], **batch.placement)
    return run_jobs(pipe, jobs, batch, state.process_index, state.num_processes, stop)


def contact_sheet(out: Path, records: list[dict[str, Any]], tile: int = 160) -> Any:
    """One row per prompt and seed, one column per ratio, each image labelled with its ratio and it/s."""
    from PIL import Image, ImageDraw

    ratios = sorted({r["ratio"] for r in records})
    rows = sorted({(r["prompt"], r["negative_prompt"], r["seed"]) for r in records})
    by_cell = {(r["prompt"], r["negative_prompt"], r["seed"], r["ratio"]): r for r in records}
    label = 16
    sheet = Image.new("RGB", (tile * len(ratios), (tile + 2 * label) * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (prompt, negative, seed) in enumerate(rows):
        top = row * (tile + 2 * label)
        draw.text((4, top + 2), f"{prompt} (seed {seed})", fill="black")
        for column, ratio in enumerate(ratios):
            record = by_cell.get((prompt, negative, seed, ratio))
            if record is None:
                continue
            with Image.open(out / record["file"]) as image:
                sheet.paste(image.convert("RGB").resize((tile, tile)), (column * tile, top + label))
            draw.text((column * tile + 4, top + label + tile + 2), f"ratio {ratio:g}: {record['its']:.2f} it/s",
                      fill="black")
    return sheet


def write_summary(out: Path) -> str:
    """Summarise every log in ``out`` into ``summary.md``; returns the Markdown."""
    records = read_logs(out)
    summary = summary_markdown(summarise(records), records) if records else "no images yet\n"
    _write_atomically(out / SUMMARY_FILE, summary.encode())
    return summary


def run_batch(batch: Batch) -> int:
    """Run ``batch`` in this process (and its share of it under ``accelerate launch``): resume what ``out``
    holds, generate the rest, then summarise every process's log.

    Returns:
        The exit code: 0 done, 2 refused (placement, an ``out`` made with other settings, a model that does
        not load or patch: the message is printed), 130 interrupted.
    """
    from accelerate import PartialState

    if batch.threads:
        torch.set_num_threads(batch.threads)
    # Without a GPU (or with --device cpu) processes started by torchrun / accelerate launch talk over gloo.
    state = PartialState(cpu=batch.device == "cpu" or (batch.device is None and not torch.accelerator.is_available()))
    stop = StopOnInterrupt()
    try:
        check_placement(batch.device or state.device, batch.offload, batch.attention)  # before out is touched
        pending = prepare_output(state, batch.out, batch.config, batch.jobs)
        with state.split_between_processes(pending) as my_jobs:
            done = generate_share(batch, my_jobs, state, stop)
    except (ValueError, TypeError, OSError) as error:  # an out of other settings, or a model that cannot load/patch
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        stop.restore()
    state.wait_for_everyone()
    if state.is_main_process:
        print(write_summary(batch.out))
        if batch.sheet:
            contact_sheet(batch.out, read_logs(batch.out)).save(batch.out / SHEET_FILE)
    print(f"rank {state.process_index}: generated {done} image(s)" + (" (interrupted)" if stop.requested else ""),
          file=sys.stderr)
    return 130 if stop.requested else 0
