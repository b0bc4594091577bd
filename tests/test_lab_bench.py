"""tomesd.lab.bench and its command line (``tomesd bench``, ``scripts/benchmark.py``): the full-size configs,
settings, U-Net and pipeline measurements, outputs."""

from __future__ import annotations

import json

import pytest
import torch

import tomesd
from tomesd.cli.bench import main as bench_main
from tomesd.lab import bench


@pytest.mark.parametrize("arch, parameters", [("sd15", 859_520_964), ("sdxl", 2_567_463_684)])
def test_full_size_configs_have_the_published_parameter_counts(arch, parameters):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**bench.UNET_CONFIGS[arch])
    assert sum(p.numel() for p in unet.parameters()) == parameters


def test_variants_are_typed_like_the_options():
    assert bench.parse_variant("mlp:merge_mlp=true,max_downsample=2") == ("mlp", {"merge_mlp": True, "max_downsample": 2})
    assert bench.parse_variant("plain:") == ("plain", {})
    with pytest.raises(ValueError, match="unknown patch option 'speed'"):
        bench.parse_variant("x:speed=1")
    with pytest.raises(ValueError, match="expected true or false"):
        bench.parse_variant("x:merge_mlp=maybe")
    assert bench.parse_variant("auto:max_downsample=auto") == ("auto", {"max_downsample": None})
    with pytest.raises(ValueError, match="expected 'auto' or an integer"):
        bench.parse_variant("x:max_downsample=big")
    with pytest.raises(ValueError, match="expected a int"):
        bench.parse_variant("x:sx=two")


def test_settings_have_one_baseline_then_every_variant_at_every_ratio():
    settings = bench.make_settings([0.5, 0.0, 0.3], [("default", {}), ("mlp", {"merge_mlp": True})])
    assert [(s.ratio, s.variant) for s in settings] == [
        (0.0, "default"), (0.3, "default"), (0.5, "default"), (0.3, "mlp"), (0.5, "mlp")]
    assert len({s.name for s in settings}) == len(settings)


@pytest.mark.parametrize("kind", ["sd1", "sdxl"])
def test_unet_measurement_on_a_toy_unet(kind):
    import tiny

    unet = tiny.unet(kind)
    settings = bench.make_settings([0.5], [("default", {"max_downsample": 2} if kind == "sdxl" else {})])
    rows = bench.measure_unet(kind, unet, settings, batch=1, resolution=64, repeats=2, warmup=0)
    assert [r.ratio for r in rows] == [0.0, 0.5]
    assert rows[0].speedup == 1.0 and all(r.median_s > 0 and r.repeats == 2 == len(r.times_s) for r in rows)
    assert rows[1].speedup == pytest.approx(rows[0].median_s / rows[1].median_s)
    assert not tomesd.is_patched(unet)


def test_pipeline_benchmark_end_to_end(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_main(["--arch", "pipeline", "--model", str(tiny_pipeline_dir), "--steps", "1", "--resolution", "32",
                       "--ratios", "0", "0.5", "--repeats", "1", "--warmup", "0", "--out", str(out),
                       "--variant", "default:min_tokens=0"]) == 0
    table = (out / "benchmark.md").read_text()
    assert table in capsys.readouterr().out
    assert "| tiny-sd | 32 | default | 0 |" in table and "| 1.00x | inf | 1.0000 |" in table
    assert "| tiny-sd | 32 | default | 0.5 |" in table
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 0.5] and rows[1]["psnr"] < float("inf")
    assert (out / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


def test_compiled_unet_measurement_reports_compile_time_apart_and_the_eager_outputs():
    """Backend "eager" (fast; the compiled path all the same): every setting gets its compile time, timed
    before the interleaved rounds (each timed repetition is a warm call), and the compiled forward at each
    setting is exactly the uncompiled one (a graph traced under one patch is never replayed under another)."""
    import tiny

    unet = tiny.unet("sd1")
    settings = bench.make_settings([0.5], [("default", {"min_tokens": 0})])
    rows = bench.measure_unet("sd1", unet, settings, batch=1, resolution=64, repeats=2, warmup=0, compile="eager")
    assert [r.ratio for r in rows] == [0.0, 0.5] and all(r.compile_s > 0 and len(r.times_s) == 2 for r in rows)
    assert not tomesd.is_patched(unet) and not hasattr(unet, "_orig_mod")
    table = bench.markdown_table(rows, "context", "U-Net forward")
    assert "| compile (s) |" in table.splitlines()[2]
    inputs = bench.unet_inputs(unet, 1, 64)
    compiled = torch.compile(unet, backend="eager")
    with torch.inference_mode():
        for setting in settings + settings[:1]:  # 0, 0.5, back to 0
            bench.set_ratio(unet, setting.ratio, setting.options)
            assert torch.equal(compiled(**inputs).sample, unet(**inputs).sample)
    tomesd.remove_patch(unet)


def test_compiled_pipeline_benchmark_end_to_end(tiny_pipeline_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench_main(["--arch", "pipeline", "--model", str(tiny_pipeline_dir), "--steps", "1", "--resolution", "32",
                       "--ratios", "0", "0.5", "--repeats", "1", "--warmup", "0", "--out", str(out),
                       "--variant", "default:min_tokens=0", "--compile", "eager"]) == 0
    table = (out / "benchmark.md").read_text()
    assert "generation, torch.compile(backend='eager')" in table and "compile time plus one call" in table
    rows = json.loads((out / "benchmark.json").read_text())["rows"]
    assert [r["ratio"] for r in rows] == [0.0, 0.5] and all(r["compile_s"] > 0 for r in rows)
    assert rows[0]["psnr"] == float("inf") and rows[1]["psnr"] < float("inf")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--ratios", "0", "1"], "ratio 1 is out of range"),
        (["--resolution", "500"], "multiple of 8"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--variant", "x:nope=1"], "unknown patch option"),
        (["--compile", "no-such-backend"], "unknown torch.compile backend 'no-such-backend'"),
        (["--compile", "--compare-013", "/bin/sh"], "--compile and --compare-013 do not mix"),
    ],
)
def test_bad_arguments_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_without_the_worker_the_unet_and_quality_benchmarks_are_refused_up_front(monkeypatch, tmp_path, capsys):
    """An installed copy has no scripts/compare_worker.py: the commands that need it say so before building
    anything (the pipeline benchmark does not need it)."""
    monkeypatch.setattr(bench, "WORKER", tmp_path / "compare_worker.py")
    for argv in (["--arch", "sd15"], ["--arch", "--quality", "2"]):
        with pytest.raises(SystemExit) as exit_info:
            bench_main([*argv, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2 and "run them from a clone" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_tomesd013_comparison_runs_the_worker_with_the_given_interpreter(monkeypatch):
    import sys

    from test_compare_worker import TINY

    # this environment's tomesd stands in for 0.1.3: the same worker, another interpreter path
    monkeypatch.setitem(bench.UNET_CONFIGS, "toy", TINY)
    rows = bench.measure_tomesd013("toy", sys.executable, [0.0, 0.5], batch=1, resolution=128, repeats=1, threads=1)
    assert [r.ratio for r in rows] == [0.0, 0.5]
    assert rows[0].variant == f"tomesd {tomesd.__version__}" and rows[0].speedup == 1.0
    assert rows[1].median_s > 0 and rows[1].speedup > 0


def test_quality_on_the_demo_model_for_this_project_and_another_interpreter(tmp_path, monkeypatch, capsys):
    import sys

    import tomesd.demo

    # tiny settings; this environment's interpreter stands in for tomesd 0.1.3's
    monkeypatch.setattr(tomesd.demo, "DEFAULT_STEPS", 2)
    monkeypatch.setattr(tomesd.demo, "DEFAULT_SIZE", 64)
    out = tmp_path / "bench"
    assert bench_main(["--arch", "--quality", "2", "--ratios", "0", "0.5", "--variant", "all:min_tokens=0",
                       "--compare-013", sys.executable, "--out", str(out)]) == 0
    report = json.loads((out / "benchmark.json").read_text())
    quality = report["quality"]
    assert [(q["variant"], q["ratio"]) for q in quality] == [("unpatched", 0.0), ("all", 0.5),
                                                             ("unpatched", 0.0), ("default", 0.5)]
    assert quality[0]["psnr"] == float("inf") and quality[1]["psnr"] < float("inf")
    assert all(0 <= q["adherence"] <= 1 for q in quality)
    assert quality[2]["adherence"] == quality[0]["adherence"]  # the same unpatched images, from either side
    table = (out / "benchmark.md").read_text()
    assert "Quality on the demo model: 2 held-out prompts, 64 px, 2 steps" in table and table in capsys.readouterr().out


def test_mergeable_share_counts_only_calls_with_enough_tokens():
    import tiny

    unet = tiny.unet()
    inputs = bench.unet_inputs(unet, batch=1, resolution=256)  # 32x32 latent: 1024 and 256 tokens
    calls, total = bench.timed_calls(unet, inputs)
    assert sorted({tokens for tokens, _ in calls}) == [256, 1024]  # attn1 and ff of both levels
    assert all(seconds > 0 for _, seconds in calls) and sum(s for _, s in calls) < total
    everything = bench.mergeable_share(calls, total, min_tokens=0)
    first_level = bench.mergeable_share(calls, total, min_tokens=1024)
    assert 0 < first_level < everything < 1  # same forward's timings: level 2's calls make the difference
    assert bench.mergeable_share(calls, total, min_tokens=10**6) == 0.0
