"""tomesd.lab.vision_bench and its command line (``tomesd bench-vision``, ``scripts/benchmark_vision.py``) at
tiny settings: a small timm ViT end to end, and a toy SAM through the measurement."""

from __future__ import annotations

import math

import pytest

import tomesd
from tomesd.cli.bench_vision import main as bench_vision_main
from tomesd.lab import vision_bench

pytest.importorskip("timm")


def test_a_tiny_vit_end_to_end(tmp_path, monkeypatch, capsys):
    case = vision_bench.Case("ViT-Ti/16", "timm", "vit_tiny_patch16_224", 2, 224, ({"r": 4}, {"r": 8}))
    monkeypatch.setitem(vision_bench.CASES, "vit_ti", case)
    out = tmp_path / "vision"
    assert bench_vision_main(["--models", "vit_ti", "--repeats", "1", "--out", str(out)]) == 0
    table = (out / "benchmark.md").read_text()
    assert table in capsys.readouterr().out
    assert "| ViT-Ti/16 | bs 2, 224 px | r=4 |" in table and "| ViT-Ti/16 | bs 2, 224 px | r=8 |" in table
    assert "top-1" in table and "cos between different images" in table
    assert (out / "benchmark.png").read_bytes()[:4] == b"\x89PNG"


def test_measure_reports_speed_flops_and_agreement_per_setting():
    case = vision_bench.Case("ViT-Ti/16", "timm", "vit_tiny_patch16_224", 2, 224, ({"r": 8},))
    rows = vision_bench.measure(case, repeats=2)
    [row] = rows
    assert row["options"] == {"r": 8} and row["base_s"] > 0 and row["tome_s"] > 0
    assert row["speedup"] == pytest.approx(row["base_s"] / row["tome_s"])
    assert row["flop_ratio"] > 1  # merging 8 tokens per block removes work
    assert 0 <= row["top1"] <= 1 and -1 <= row["cosine"] <= 1 and not math.isnan(row["spread"])


def test_a_toy_sam_encoder_gets_mask_agreement(monkeypatch):
    pytest.importorskip("segment_anything")
    from test_patch_sam import build_segment_anything

    sam = build_segment_anything()
    case = vision_bench.Case("toy SAM", "sam", "toy", 1, 256, ({"sx": 2, "sy": 2},))
    monkeypatch.setattr(vision_bench, "build", lambda c: (sam, sam.image_encoder,
                                                          vision_bench.to_tensor(vision_bench.drawn_images(1, 256))))
    [row] = vision_bench.measure(case, repeats=1)
    assert 0 <= row["mask_iou"] <= 1 and -1 <= row["cosine"] <= 1 and row["spread"] is None
    assert not tomesd.is_patched(sam)


def test_bad_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_vision_main(["--repeats", "0"])
    assert exit_info.value.code == 2 and "--repeats and --threads must be at least 1" in capsys.readouterr().err
