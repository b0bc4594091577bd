"""The measuring wing on the image DiT pipelines (Flux, SD3, PixArt-Sigma, Sana) and the video pipelines
(AnimateDiff, Stable Video Diffusion, Wan), built tiny offline by ``diffusers_zoo.py``, saved with
``save_pretrained`` and loaded through the lab as a user's local model folders; and ``--compile`` on the toy
SD pipeline (backend "eager": the compiled path, checked fast; not fullgraph, the patch may break graphs).

Merging on a model the patch supports runs; on one it refuses, ``tomesd generate`` exits 2 with the patch's
reason before any image is written. Which it is follows the patch (asked through ``apply_patch``), so the
patched tests run as soon as the patch supports a model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy
import pytest
import torch
import torch._dynamo
from PIL import Image

import tomesd
from tomesd.cli.generate import main as generate_main
from tomesd.lab import batch
from tomesd.lab.generation import GenerationSettings, call_arguments, generate, is_video_pipeline, unpatch
from tomesd.lab.loading import default_settings, load_pipeline, pipeline_class_name
from tomesd.lab.sweep import compare_ratios, results_table

SIZE = 32
VIDEO_FRAMES = {"AnimateDiffPipeline": 2, "StableVideoDiffusionPipeline": 2, "WanPipeline": 5}  # Wan: 4k + 1 frames
IMAGE_DITS = ["FluxPipeline", "PixArtSigmaPipeline", "SanaPipeline", "StableDiffusion3Pipeline"]
PIPELINES = IMAGE_DITS + sorted(VIDEO_FRAMES)
MERGE_EVERYWHERE = {"min_tokens": 0}  # the toy models' grids are far below the default 1024 tokens

@pytest.fixture(scope="session")
def first_frame(tmp_path_factory) -> Path:
    """The conditioning image of Stable Video Diffusion."""
    path = tmp_path_factory.mktemp("image") / "first.png"
    Image.new("RGB", (SIZE, SIZE), (200, 30, 30)).save(path)
    return path


def _settings(name: str, image: Path) -> GenerationSettings:
    return GenerationSettings("a red circle", steps=2, width=SIZE, height=SIZE, frames=VIDEO_FRAMES.get(name),
                              image=str(image) if name == "StableVideoDiffusionPipeline" else None)


def _argv(name: str, folder: Path, out: Path, image: Path, *extra: str) -> list[str]:
    argv = ["--model", str(folder), "--out", str(out), "--prompt", "a red circle", "--steps", "2", "--width",
            str(SIZE), "--height", str(SIZE), "--no-warmup", *extra]
    if name in VIDEO_FRAMES:
        argv += ["--frames", str(VIDEO_FRAMES[name])]
    if name == "StableVideoDiffusionPipeline":
        argv += ["--image", str(image)]
    return argv


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(out.glob("log.rank*.jsonl")) for line in path.read_text().splitlines()]


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(numpy.asarray(image.convert("RGB")).copy())


def _same(a: list[Image.Image], b: list[Image.Image]) -> bool:
    return len(a) == len(b) and all(torch.equal(_pixels(x), _pixels(y)) for x, y in zip(a, b))


def _frames(generation) -> list[Image.Image]:
    return generation.frames if generation.frames is not None else [generation.image]


def _patch_refusal(pipe) -> str | None:
    """The patch's refusal of ``pipe`` at ratio 0.5 (None: it accepts it)."""
    try:
        tomesd.apply_patch(pipe, ratio=0.5, **MERGE_EVERYWHERE)
    except (ValueError, TypeError) as error:
        return str(error)
    finally:
        tomesd.remove_patch(pipe)
    return None


# ---------------------------------------------------------------- DiT and video pipelines

@pytest.mark.parametrize("name", PIPELINES)
def test_ratio_0_is_the_untouched_pipeline_and_generate_writes_it(name, zoo_dirs, first_frame, tmp_path):
    """Exact: at ratio 0 the lab's generation is the pipeline's own output for the same arguments and seed;
    the command writes it (a PNG, or a video's frames as a GIF) with a log line of its speed."""
    folder = zoo_dirs(name)
    pipe = load_pipeline(folder)
    assert type(pipe).__name__ == name and is_video_pipeline(pipe) == (name in VIDEO_FRAMES)
    settings = _settings(name, first_frame)
    generation = generate(pipe, settings, 0, 0.0)
    assert generation.run.steps == 2 and math.isfinite(generation.run.its) and generation.run.its > 0
    output = pipe(**call_arguments(pipe, settings, torch.Generator("cpu").manual_seed(0)))
    direct = output.frames[0] if name in VIDEO_FRAMES else output.images
    assert _same(_frames(generation), direct)
    assert len(_frames(generation)) == VIDEO_FRAMES.get(name, 1)

    out = tmp_path / "run"
    assert generate_main(_argv(name, folder, out, first_frame, "--ratios", "0")) == 0
    (record,) = _records(out)
    assert record["steps"] == 2 and record["its"] > 0 and record["frames"] == VIDEO_FRAMES.get(name)
    assert record["compile"] is None and record["compile_seconds"] is None
    path = out / record["file"]
    assert path.suffix == (".gif" if name in VIDEO_FRAMES else ".png")
    with Image.open(path) as written:
        assert written.size == (SIZE, SIZE) and getattr(written, "n_frames", 1) == VIDEO_FRAMES.get(name, 1)
    assert "| 0 | 1 |" in (out / "summary.md").read_text()


@pytest.mark.parametrize("name", PIPELINES)
def test_merging_runs_where_the_patch_supports_the_model_else_generate_says_why(name, zoo_dirs, first_frame,
                                                                               tmp_path, capsys):
    folder = zoo_dirs(name)
    refusal = _patch_refusal(load_pipeline(folder))
    out = tmp_path / "run"
    code = generate_main(_argv(name, folder, out, first_frame, "--ratios", "0", "0.5", "--min-tokens", "0"))
    if refusal is None:
        assert code == 0
        assert sorted(r["ratio"] for r in _records(out)) == [0.0, 0.5]
    else:
        assert code == 2
        error = capsys.readouterr().err
        assert f"cannot merge tokens at ratio 0.5: {refusal}" in error and name in error
        assert not batch.finished_images(out) and not (out / batch.RUN_FILE).exists()


@pytest.mark.parametrize("name", PIPELINES)
def test_patched_generation_merges_and_unpatching_restores_the_baseline(name, zoo_dirs, first_frame):
    """Where the patch supports the model (skipped until it does): merging changes the output, and after it the
    unpatched pipeline gives the baseline again, exactly."""
    pipe = load_pipeline(zoo_dirs(name))
    refusal = _patch_refusal(pipe)
    if refusal is not None:
        pytest.skip(f"the patch refuses {name}: {refusal}")
    settings = _settings(name, first_frame)
    baseline = _frames(generate(pipe, settings, 0, 0.0))
    merged = generate(pipe, settings, 0, 0.5, MERGE_EVERYWHERE)
    assert tomesd.is_patched(pipe) and all(torch.isfinite(_pixels(f).float()).all() for f in _frames(merged))
    assert not _same(_frames(merged), baseline)
    assert _same(_frames(generate(pipe, settings, 0, 0.0)), baseline) and not tomesd.is_patched(pipe)


def test_settings_a_pipeline_cannot_take_are_refused_before_anything_is_written(zoo_dirs, first_frame, tmp_path,
                                                                                 capsys):
    svd = load_pipeline(zoo_dirs("StableVideoDiffusionPipeline"))
    with pytest.raises(ValueError, match="StableVideoDiffusionPipeline generates from an image: give the conditioning"):
        call_arguments(svd, GenerationSettings("x", width=SIZE, height=SIZE, frames=2))
    with pytest.raises(ValueError, match="StableVideoDiffusionPipeline takes no negative prompt"):
        call_arguments(svd, GenerationSettings("x", "blurry", image=str(first_frame)))
    flux = load_pipeline(zoo_dirs("FluxPipeline"))
    with pytest.raises(ValueError, match="FluxPipeline takes no frames"):
        call_arguments(flux, GenerationSettings("x", frames=4))
    out = tmp_path / "run"
    argv = ["--model", str(zoo_dirs("StableVideoDiffusionPipeline")), "--out", str(out), "--prompt", "x", "--steps",
            "1", "--width", str(SIZE), "--height", str(SIZE), "--ratios", "0"]
    assert generate_main(argv) == 2
    assert "generates from an image" in capsys.readouterr().err and not batch.finished_images(out)


def test_a_folder_gets_its_pipeline_class_defaults(zoo_dirs, tiny_pipeline_dir):
    flux = zoo_dirs("FluxPipeline")
    assert pipeline_class_name(flux) == "FluxPipeline"
    assert {key: default_settings(flux)[key] for key in ("size", "steps", "guidance")} == {
        "size": 1024, "steps": 28, "guidance": 3.5}
    assert default_settings(tiny_pipeline_dir)["guidance"] == 7.5 and pipeline_class_name("demo") is None


def test_classic_attention_is_refused_for_a_transformer(zoo_dirs):
    with pytest.raises(ValueError, match="attention='classic' is for U-Net pipelines; FluxPipeline"):
        load_pipeline(zoo_dirs("FluxPipeline"), attention="classic")


# ---------------------------------------------------------------- compile

def test_compiled_sweep_gives_the_eager_images_at_every_ratio(tiny_pipeline_dir):
    """Exact (backend "eager" runs the traced graph with the same kernels): compiled, every ratio gives the
    uncompiled image, also when the ratios alternate, so no graph traced under one patch is replayed under
    another; compile time is reported apart, and the pipeline ends plain (no patch, no compile wrapper)."""
    pipe = load_pipeline(tiny_pipeline_dir)
    settings = GenerationSettings("a red cat", steps=2, width=SIZE, height=SIZE)
    eager = compare_ratios(pipe, settings, 0, [0.5], MERGE_EVERYWHERE, repeats=2)
    compiled = compare_ratios(pipe, settings, 0, [0.5], MERGE_EVERYWHERE, repeats=2, compile="eager")
    assert not _same([eager[0].image], [eager[1].image])  # merging shows: a stale graph would be caught
    for plain, fast in zip(eager, compiled):
        assert plain.ratio == fast.ratio and _same([plain.image], [fast.image])
        assert plain.compile_seconds is None and fast.compile_seconds > 0 and fast.its > 0
    assert "compile (s)" in results_table(compiled) and "compile (s)" not in results_table(eager)
    assert not tomesd.is_patched(pipe) and not hasattr(pipe.unet, "_orig_mod")
    assert not pipe.unet._forward_pre_hooks  # the timing hook went onto the wrapper, and left with it


def test_a_compiled_generation_stays_compiled_until_unpatched(tiny_pipeline_dir):
    pipe = load_pipeline(tiny_pipeline_dir)
    settings = GenerationSettings("a red cat", steps=1, width=SIZE, height=SIZE)
    generate(pipe, settings, 0, 0.5, MERGE_EVERYWHERE, compile="eager")
    assert hasattr(pipe.unet, "_orig_mod") and tomesd.is_patched(pipe)
    assert not pipe.unet._forward_pre_hooks
    unpatch(pipe)
    assert not hasattr(pipe.unet, "_orig_mod") and not tomesd.is_patched(pipe)


def test_generate_compile_logs_the_compile_time_apart(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--model", str(tiny_pipeline_dir), "--out", str(out), "--prompt", "a red cat", "--steps", "2", "--width",
            str(SIZE), "--height", str(SIZE), "--ratios", "0", "0.5", "--min-tokens", "0", "--compile", "eager"]
    assert generate_main(argv) == 0
    records = _records(out)
    assert sorted(r["ratio"] for r in records) == [0.0, 0.5]
    assert all(r["compile"] == "eager" and r["compile_seconds"] > 0 and r["its"] > 0 for r in records)
    summary = (out / "summary.md").read_text()
    assert "torch.compile(backend=eager)" in summary and "compile (s) |" in summary
    for record in records:  # each ratio's row shows its own compile time
        assert f" {record['compile_seconds']:.2f} |" in summary
    capsys.readouterr()
    # Resuming without --compile would mix eager and compiled speeds in one folder: refused.
    assert generate_main([a for a in argv if a not in ("--compile", "eager")] + ["--seeds", "1"]) == 2
    assert "compile='eager', but this run has compile=None" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--compile", "eager", "--no-warmup"], "compiling needs the warm-up"),
        (["--compile", "no-such-backend"], "unknown torch.compile backend 'no-such-backend'"),
        (["--fps", "0"], "fps=0 must be a positive integer"),
        (["--frames", "0"], "frames=0 must be a positive integer"),
        (["--image", "/no/such.png"], "conditioning image '/no/such.png' does not exist"),
    ],
)
def test_bad_compile_and_video_options_are_refused_up_front(extra, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        generate_main(["--out", str(out), "--prompt", "a cat", *extra])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err and not out.exists()


_GRAPHS: list[int] = []  # one entry per graph the counting backend was given


def _count_graphs(graph, example_inputs):
    _GRAPHS.append(1)
    return graph.forward


torch._dynamo.register_backend(_count_graphs, name="tomesd_test_counting")


@pytest.mark.parametrize("ratios", [[0.0], [0.5]], ids=["unpatched", "patched"])
def test_after_the_warm_ups_nothing_compiles_again(ratios, tiny_pipeline_dir):
    """Counted with a backend that counts its graphs: whatever compiles (a patch's graph breaks included, and
    recompiles when ratios alternate) does so in the warm-ups, so the timed generations never include it."""
    _GRAPHS.clear()
    graphs = _GRAPHS
    pipe = load_pipeline(tiny_pipeline_dir)
    timed: list[int] = []

    def on_step(stage: str, step: int, total: int) -> None:
        if stage.startswith("ratio"):  # a timed generation (the warm-ups' stages are "compiling, ...")
            timed.append(len(graphs))

    torch._dynamo.reset()
    results = compare_ratios(pipe, GenerationSettings("a red cat", steps=3, width=SIZE, height=SIZE), 0, ratios,
                             MERGE_EVERYWHERE, repeats=2, on_step=on_step, compile="tomesd_test_counting")
    assert graphs and all(r.compile_seconds > 0 for r in results)
    assert len(timed) == 3 * 2 * len(results) and set(timed) == {len(graphs)}
