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


def test_a_ratio_the_strides_cap_is_shown_with_its_effective_ratio(tmp_path):
    """At sx=sy=2 at most 3/4 of the tokens can merge: 0.9 must read "0.9 (0.75 effective)" in the table and
    captions (exact: every block of the toy U-Net has an even grid), 0.5 (uncapped) no note; the apply-time
    warning stays."""
    import tiny

    pipe = tiny.sd_pipeline(tmp_path)
    pipe.set_progress_bar_config(disable=True)
    with pytest.warns(UserWarning, match="ratio=0.9 is more than") as caught:
        results = compare_ratios(pipe, GenerationSettings("a cat", steps=1, width=32, height=32), seed=1,
                                 ratios=[0.5, 0.9], options={"min_tokens": 0}, warmup=False)
    assert sum("ratio=0.9 is more than" in str(w.message) for w in caught) == 1  # once, not again per report
    assert [(r.ratio, r.effective_ratio) for r in results] == [(0.0, 0.0), (0.5, 0.5), (0.9, 0.75)]
    table = results_table(results)
    assert "| 0.9 (0.75 effective) |" in table and "| 0.5 |" in table and "| 0 |" in table
    assert table.count("effective") == 1
    assert results[2].caption.startswith("ratio 0.9 (0.75 effective) ·")
    assert results[1].caption.startswith("ratio 0.5 ·")


def test_ratio_label_notes_the_effective_ratio_only_where_it_differs():
    from tomesd.lab.generation import ratio_label

    assert ratio_label(0.9, 0.75) == "0.9 (0.75 effective)"
    assert ratio_label(0.5, 0.0) == "0.5 (0 effective)"  # no block merges at all
    assert ratio_label(0.3, 0.2998) == "0.3"  # int() rounding of a block's count is not a cap
    assert ratio_label(0.5, None) == "0.5"
