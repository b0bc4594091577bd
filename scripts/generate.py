"""Batch generation with token merging and a per-image speed log.

Every prompt x seed x ratio is one image. Images go to ``--out`` with a JSON line per image in
``log.rank<N>.jsonl`` (prompt, seed, ratio, patch options, steps, size, seconds, it/s, peak memory,
device, dtype, library versions, process rank), and a per-ratio summary is printed and written to
``summary.md``. Re-running the same command skips images already written (resume); Ctrl-C finishes the
image in progress and stops (a second Ctrl-C stops at once), leaving only complete images and log lines.

Runs unchanged under ``accelerate launch --num_processes N scripts/generate.py ...``: the pending jobs are
split across the processes, each on its own device, and the summary covers all of them.

Example::

    python scripts/generate.py --prompts prompts.txt --seeds 0 1 --ratios 0 0.5 --out runs/demo
"""

from __future__ import annotations

import argparse
import csv
import functools
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
from typing import Any, Iterable

import torch

import tomesd
from tomesd.lab.generation import GenerationSettings, check_ratio, generate, parse_option, patch_option_defaults
from tomesd.lab.loading import ATTENTION, DEMO, DTYPES, OFFLOAD, check_placement, default_settings, load_pipeline
from tomesd.lab.timing import execution_device

RUN_FILE = "run.json"
SUMMARY_FILE = "summary.md"
SHEET_FILE = "sheet.png"
LOG_GLOB = "log.rank*.jsonl"


@dataclass(frozen=True)
class Job:
    """One image to generate."""

    prompt: str
    negative_prompt: str
    seed: int
    ratio: float

    @property
    def filename(self) -> str:
        """A name unique to prompt, negative prompt, seed and ratio, readable at a glance."""
        digest = hashlib.sha1(f"{self.prompt}\0{self.negative_prompt}".encode()).hexdigest()[:8]
        slug = re.sub(r"[^a-z0-9]+", "-", self.prompt.lower()).strip("-")[:40] or "prompt"
        return f"{slug}-{digest}_seed{self.seed}_ratio{self.ratio:g}.png"


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
    text = path.read_text(encoding="utf-8")
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
        prompt = (row.get("prompt") or "").strip()
        if not prompt:
            raise ValueError(f"prompt file {str(path)!r}, entry {number}: no 'prompt' (or it is empty)")
        prompts.append((prompt, (row.get("negative_prompt") or "").strip()))
    if not prompts:
        raise ValueError(f"prompt file {str(path)!r} contains no prompt")
    return prompts


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


def check_run_config(out: Path, config: dict[str, Any], write: bool) -> None:
    """Make sure ``out`` only ever holds images of one setting: record it in ``run.json`` on the first
    run, and refuse a re-run (resume) with different settings.

    Raises:
        ValueError: ``out`` was made with other settings (names the first differing one).
    """
    path = out / RUN_FILE
    if path.is_file():
        previous = json.loads(path.read_text())
        for key in sorted(set(previous) | set(config)):
            if previous.get(key) != config.get(key):
                raise ValueError(
                    f"{str(out)!r} holds images made with {key}={previous.get(key)!r}, but this run has "
                    f"{key}={config.get(key)!r}; use another --out, or the same settings to resume"
                )
    elif write:
        _write_atomically(path, json.dumps(config, indent=2, sort_keys=True).encode())


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
    """Per ratio: images, mean it/s, mean seconds and speedup (mean it/s over ratio 0's mean it/s)."""
    by_ratio: dict[float, list[dict[str, Any]]] = {}
    for record in records:
        by_ratio.setdefault(record["ratio"], []).append(record)
    base = statistics.mean(r["its"] for r in by_ratio[0.0]) if 0.0 in by_ratio else None
    rows = []
    for ratio in sorted(by_ratio):
        its = statistics.mean(r["its"] for r in by_ratio[ratio])
        rows.append({
            "ratio": ratio,
            "images": len(by_ratio[ratio]),
            "mean_its": its,
            "mean_seconds": statistics.mean(r["seconds"] for r in by_ratio[ratio]),
            "speedup": its / base if base else None,
        })
    return rows


def summary_markdown(rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The summary as a Markdown table, with the devices and processes it covers."""
    devices = sorted({r["device"] for r in records})
    ranks = sorted({r["rank"] for r in records})
    lines = [
        f"{len(records)} images; devices: {', '.join(devices)}; process ranks: {', '.join(map(str, ranks))}",
        "",
        "| ratio | images | mean it/s | mean seconds | speedup vs ratio 0 |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        speedup = "n/a" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        lines.append(
            f"| {row['ratio']:g} | {row['images']} | {row['mean_its']:.3f} | {row['mean_seconds']:.2f} | {speedup} |"
        )
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
               world_size: int, versions: dict[str, str], placement: dict[str, str]) -> dict[str, Any]:
    """The log line of one image."""
    return {
        "file": job.filename,
        "prompt": job.prompt,
        "negative_prompt": job.negative_prompt,
        "seed": job.seed,
        "ratio": job.ratio,
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
        **placement,
        "torch_threads": torch.get_num_threads(),
        "rank": rank,
        "world_size": world_size,
        "versions": versions,
        "time": datetime.now(timezone.utc).isoformat(),
    }


def run_jobs(pipe: Any, jobs: list[Job], settings_for: Any, config: dict[str, Any], out: Path, log_path: Path,
             rank: int, world_size: int, warmup: bool, stop: StopOnInterrupt, placement: dict[str, str]) -> int:
    """Generate ``jobs`` in order, each image written atomically after its log line. Returns how many were done."""
    from tqdm.auto import tqdm

    device = execution_device(pipe)
    versions = library_versions()
    options = config["patch_options"]
    if warmup and jobs:
        for ratio in sorted({job.ratio for job in jobs}):
            generate(pipe, settings_for(jobs[0], steps=1), jobs[0].seed, ratio, options)
    done = 0
    bar = tqdm(jobs, desc=f"rank {rank}" if world_size > 1 else "images", position=rank)
    try:
        for job in bar:
            if stop.requested:
                break
            generation = generate(pipe, settings_for(job), job.seed, job.ratio, options)
            tmp = out / f".{job.filename}.partial"  # not *.png: never mistaken for a finished image
            generation.image.save(tmp, format="PNG")
            append_log(log_path, log_record(job, generation, config, device, rank, world_size, versions, placement))
            os.replace(tmp, out / job.filename)
            done += 1
            bar.set_postfix(ratio=f"{job.ratio:g}", its=f"{generation.run.its:.2f}")
    except KeyboardInterrupt:  # second Ctrl-C: the current image is abandoned; the next run removes its .partial
        stop.requested = True
    finally:
        bar.close()
        tomesd.remove_patch(pipe)
    return done


# ---------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    """The command line, patch options included (one flag per ``tomesd.patch.diffusers.OPTIONS`` entry)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("prompts")
    source.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    source.add_argument("--prompts", type=Path, help="a .txt (one per line), .csv or .jsonl file of prompts")
    source.add_argument("--negative-prompt", default="", help="negative prompt for --prompt prompts")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5],
                        help="merge ratios, 0 <= ratio < 1 (default: 0 0.5; 0 is the baseline of the speedups)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (images, logs, summary)")
    parser.add_argument("--model", default=DEMO, help="'demo' (default), a diffusers folder, a .safetensors "
                        "file or a model id")
    parser.add_argument("--config", help="for a single .safetensors --model: a diffusers folder or model id with "
                        "its architecture's configs and tokenizer (default: its base model, from the hub or cache)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: the model's usual)")
    parser.add_argument("--guidance", type=float, help="guidance scale (default: the model's usual)")
    parser.add_argument("--width", type=int, help="pixels, multiple of 8 (default: the model's usual)")
    parser.add_argument("--height", type=int, help="pixels, multiple of 8 (default: the model's usual)")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES))
    parser.add_argument("--device", help="e.g. cpu, cuda:0 (default: accelerate's choice for this process)")
    parser.add_argument("--offload", default="none", choices=OFFLOAD,
                        help="keep weights on the CPU, moving them to the GPU per model or per layer (GPU only)")
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION,
                        help="U-Net attention: PyTorch SDPA (default), classic softmax(QK^T)V, or xformers (GPU)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--sheet", action="store_true",
                        help=f"also write {SHEET_FILE}: every image in a grid, a row per prompt and seed, a column per ratio")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="skip the untimed 1-step generation per ratio that precedes the timed ones")
    patch = parser.add_argument_group("patch options (tomesd.patch.diffusers)")
    for name, default in patch_option_defaults().items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            patch.add_argument(flag, dest=name, default=default, action=argparse.BooleanOptionalAction,
                               help=f"(default: {default})")
        else:
            patch.add_argument(flag, dest=name, default=default, type=functools.partial(_option_argument, name),
                               help=f"(default: {'auto' if default is None else default})")
    return parser


def _option_argument(name: str, text: str) -> Any:
    """argparse type of a patch option: its value, or an ``ArgumentTypeError`` with the reason."""
    try:
        return parse_option(name, text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[Job], dict[str, Any]]:
    """Arguments, the job list and the run configuration; ``parser.error`` (exit 2) on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        prompts = [(p, args.negative_prompt) for p in args.prompt] + (read_prompts(args.prompts) if args.prompts else [])
        if not prompts:
            raise ValueError("no prompt: give --prompt TEXT or --prompts FILE")
        ratios = sorted({check_ratio(ratio) for ratio in args.ratios})
        defaults = default_settings(args.model)
        config = {
            "model": args.model,
            "config": args.config,
            "steps": args.steps or defaults["steps"],
            "guidance": defaults["guidance"] if args.guidance is None else args.guidance,
            "width": args.width or defaults["size"],
            "height": args.height or defaults["size"],
            "dtype": args.dtype,
            "patch_options": {name: getattr(args, name) for name in patch_option_defaults()},
        }
        GenerationSettings("check", "", config["steps"], config["guidance"], config["width"], config["height"])
    except ValueError as error:
        parser.error(str(error))
    jobs = plan_jobs(prompts, list(dict.fromkeys(args.seeds)), ratios)
    return args, jobs, config


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
    check_run_config(out, config, write=state.is_main_process)
    pending = [job for job in jobs if not (out / job.filename).is_file()]
    state.wait_for_everyone()  # every process has listed the pending jobs before any is written
    if state.is_main_process:
        print(f"{len(jobs)} images planned, {len(jobs) - len(pending)} already written, {len(pending)} to "
              f"generate on {state.num_processes} process(es)", file=sys.stderr)
    return pending


def generate_share(args: argparse.Namespace, config: dict[str, Any], jobs: list[Job], state: Any,
                   stop: StopOnInterrupt) -> int:
    """Load the model on this process's device and generate this process's ``jobs``; returns how many."""
    if not jobs:
        return 0
    placement = {"offload": args.offload, "attention": args.attention}
    pipe = load_pipeline(args.model, device=args.device or state.device, dtype=args.dtype, config=args.config,
                         **placement)

    def settings_for(job: Job, steps: int | None = None) -> GenerationSettings:
        return GenerationSettings(job.prompt, job.negative_prompt, steps or config["steps"], config["guidance"],
                                  config["width"], config["height"])

    return run_jobs(pipe, jobs, settings_for, config, args.out, args.out / f"log.rank{state.process_index}.jsonl",
                    state.process_index, state.num_processes, args.warmup, stop, placement)


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


def main(argv: list[str] | None = None) -> int:
    """Run the batch; returns the exit code (0 done, 2 bad input, 130 interrupted)."""
    from accelerate import PartialState

    args, jobs, config = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Without a GPU (or with --device cpu) processes started by torchrun / accelerate launch talk over gloo.
    state = PartialState(cpu=args.device == "cpu" or (args.device is None and not torch.accelerator.is_available()))
    stop = StopOnInterrupt()
    try:
        check_placement(args.device or state.device, args.offload, args.attention)  # before --out is touched
        pending = prepare_output(state, args.out, config, jobs)
        with state.split_between_processes(pending) as my_jobs:
            done = generate_share(args, config, my_jobs, state, stop)
    except (ValueError, OSError) as error:  # placement, settings of an existing --out, or a model that cannot load
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        stop.restore()
    state.wait_for_everyone()
    if state.is_main_process:
        print(write_summary(args.out))
        if args.sheet:
            contact_sheet(args.out, read_logs(args.out)).save(args.out / SHEET_FILE)
    print(f"rank {state.process_index}: generated {done} image(s)" + (" (interrupted)" if stop.requested else ""),
          file=sys.stderr)
    return 130 if stop.requested else 0


if __name__ == "__main__":
    sys.exit(main())
