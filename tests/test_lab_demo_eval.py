"""tomesd.lab.demo_eval and its command line (``tomesd evaluate-demo``, ``scripts/evaluate_demo.py``) on the
shipped demo model at tiny settings: 2 prompts, 2 steps, 64 px (the U-Net's first level then holds 32 x 32 =
1024 tokens, so ratio 0.5 merges there)."""

from __future__ import annotations

import json
import math

import pytest

from tomesd.cli.evaluate_demo import main as evaluate_main
from tomesd.lab.demo_eval import DemoEvaluation


def test_a_tiny_evaluation_writes_its_report_json_and_grids(tmp_path, capsys):
    out = tmp_path / "demo"
    assert evaluate_main(["--count", "2", "--ratios", "0.5", "0", "--steps", "2", "--size", "64", "--batch", "2",
                          "--out", str(out)]) == 0
    report = (out / "quality.md").read_text()
    assert report in capsys.readouterr().out
    assert report.startswith("2 held-out prompts, 64x64 px, 2 steps") and "| 0 |" in report and "| 0.5 |" in report
    result = json.loads((out / "quality.json").read_text())
    base, merged = result["rows"]
    assert (base["ratio"], merged["ratio"]) == (0.0, 0.5) and len(result["prompts"]) == 2
    assert base["psnr"] == math.inf and base["ssim"] == pytest.approx(1.0)
    assert merged["psnr"] < math.inf  # merging happened and changed the images
    assert all(0 <= row["adherence"] <= 1 for row in result["rows"]) and 0 <= result["chance"] <= 1
    assert result["settings"]["count"] == "2" and set(result["per_attribute_ratio0"]) <= {"size", "colour", "shape",
                                                                                        "background"}
    for name in ("held_out_grid.png", "ratios.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


def test_textured_prompts_on_another_model_folder(tiny_pipeline_dir, tmp_path):
    """--textures draws the textured held-out captions (the per-attribute line then scores the texture words),
    --model another pipeline folder (a tiny one here: what it draws is noise, the plumbing is the point)."""
    from tomesd.demo.shapes import evaluation_captions

    out = tmp_path / "demo"
    assert evaluate_main(["--count", "6", "--ratios", "0", "--steps", "1", "--size", "32", "--batch", "6",
                          "--textures", "--model", str(tiny_pipeline_dir), "--out", str(out)]) == 0
    result = json.loads((out / "quality.json").read_text())
    assert result["prompts"] == evaluation_captions(6, "held_out", 0, textures=True)
    assert "texture" in result["per_attribute_ratio0"] and result["settings"]["model"] == str(tiny_pipeline_dir)
    assert (out / "quality.md").read_text().startswith("6 held-out textured prompts, 32x32 px, 1 steps")


@pytest.mark.parametrize("argv, message", [
    (["--ratios", "0.5"], "the ratios must include 0"),
    (["--ratios", "0", "1.5"], "ratio 1.5 is out of range"),
    (["--size", "60"], "size=60 must be a positive multiple of 8"),
    (["--count", "0"], "count=0 must be at least 1"),
])
def test_bad_arguments_exit_2_before_anything_is_drawn(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([*argv, "--out", str(tmp_path / "demo")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_the_settings_are_normalised():
    assert DemoEvaluation(ratios=(0.5, 0, 0.5)).ratios == (0.0, 0.5)
