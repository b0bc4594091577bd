"""tomesd.lab.sweep: one prompt and seed at several ratios, timed in turns, compared with ratio 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tomesd
from tomesd.lab.generation import GenerationSettings
from tomesd.lab.sweep import compare_ratios, parse_ratios, results_table, speed_chart


def test_ratios_are_sorted_deduplicated_with_the_baseline_first():
    assert parse_ratios(["0.5", 0.3, 0.5]) == [0.0, 0.3, 0.5]
    for bad, message in [(1.0, "out of range"), (-0.1, "out of range"), ("half", "not a number")]:
        with pytest.raises(ValueError, match=message):
            parse_ratios([bad])


def test_compare_ratios_times_every_ratio_and_measures_differences(tmp_path):
    import tiny

    pipe = tiny.sd_pipeline(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    stages = []
    results = compare_ratios(pipe, GenerationSettings("a cat", steps=1, width=32, height=32), seed=1,
                             ratios=[0.5], options={"min_tokens": 0},  # the toy U-Net has 256 tokens
                             repeats=2, on_step=lambda stage, step, total: stages.append(stage))
    assert not tomesd.is_patched(pipe)
    assert [r.ratio for r in results] == [0.0, 0.5]
    base, merged = results
    assert base.speedup == 1.0 and base.psnr == math.inf and base.ssim == pytest.approx(1.0)
    assert not np.asarray(base.diff_map).any()
    assert merged.psnr < math.inf and np.asarray(merged.diff_map).any()
    assert merged.speedup == pytest.approx(base.seconds / merged.seconds)
    assert stages[:2] == ["warm-up, ratio 0"] * 1 + ["warm-up, ratio 0.5"]  # one step each
    assert stages.count("ratio 0.5, run 2/2") == 1  # one call per step; steps=1
    table = results_table(results)
    assert "| 0 |" in table and "| 0.5 |" in table and "1.00x" in table and "| inf |" in table
    assert "ratio 0.5" in merged.caption and "it/s" in merged.caption
    assert len(speed_chart(results).axes[0].patches) == 2
