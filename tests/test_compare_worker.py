"""The speed worker that times the U-Net for both this project and tomesd 0.1.3 (tiny config here)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The environment scripts/setup_tomesd013.sh makes (or another interpreter that imports tomesd 0.1.3).
TOMESD013_PYTHON = Path(os.environ.get("TOMESD013_PYTHON", ROOT / ".venv-tomesd013" / "bin" / "python"))
TINY = {
    "sample_size": 16, "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32, "attention_head_dim": 8,
}


def test_worker_reports_interleaved_speedups_and_exact_ratio_zero():
    spec = {
        "config": TINY, "latent": 16, "batch": 2, "threads": 1, "repeats": 2,
        "settings": [{"label": "r0", "options": {"ratio": 0.0}}, {"label": "r0.5", "options": {"ratio": 0.5, "min_tokens": 0}}],
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_worker.py")], input=json.dumps(spec),
        capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(done.stdout)
    assert result["threads"] == 1 and len(result["baseline_s"]) == 2
    by_label = {s["label"]: s for s in result["settings"]}
    assert by_label["r0"]["deviation"] == 0.0  # ratio 0 is bit-identical
    assert by_label["r0.5"]["deviation"] > 0
    assert all(len(s["times_s"]) == 2 and s["speedup"] > 0 for s in by_label.values())


def test_worker_draws_the_same_prompts_unpatched_and_under_every_setting(tiny_pipeline_dir, tmp_path):
    import numpy as np
    from PIL import Image

    spec = {
        "mode": "images", "model": str(tiny_pipeline_dir), "prompts": ["a red circle", "a blue square", "a cat"],
        "seed": 3, "size": 64, "steps": 2, "guidance": 5.0, "batch": 2, "threads": 1, "out": str(tmp_path),
        "settings": [{"label": "r0", "options": {"ratio": 0.0}},
                     {"label": "r0.5", "options": {"ratio": 0.5, "min_tokens": 0}}],
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "compare_worker.py")], input=json.dumps(spec),
        capture_output=True, text=True, check=True, timeout=300,
    )
    files = json.loads(done.stdout)["images"]
    assert sorted(files) == ["r0", "r0.5", "unpatched"] and all(len(f) == 3 for f in files.values())
    pixels = {label: [np.asarray(Image.open(f)) for f in paths] for label, paths in files.items()}
    assert all(p.shape == (64, 64, 3) for p in pixels["unpatched"])
    assert all(np.array_equal(a, b) for a, b in zip(pixels["unpatched"], pixels["r0"]))  # ratio 0: exact
    assert not all(np.array_equal(a, b) for a, b in zip(pixels["unpatched"], pixels["r0.5"]))
    assert not np.array_equal(pixels["unpatched"][0], pixels["unpatched"][1])  # each prompt its own seed


def _without_this_project() -> dict[str, str]:
    """This environment minus PYTHONPATH (which puts this project's ``tomesd`` first), one thread."""
    return {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.skipif(not TOMESD013_PYTHON.exists(),
                    reason=f"no tomesd 0.1.3 interpreter at {TOMESD013_PYTHON}: run scripts/setup_tomesd013.sh "
                           "(or set TOMESD013_PYTHON)")
def test_worker_runs_under_the_original_tomesd_013():
    """The worker must call the U-Net as pipelines do: 0.1.3's pre-hook reads the sample from ``args[0]``."""
    spec = {
        "config": TINY, "latent": 16, "batch": 2, "threads": 1, "repeats": 1,
        "settings": [{"label": "r0", "options": {"ratio": 0.0}}, {"label": "r0.5", "options": {"ratio": 0.5}}],
    }
    done = subprocess.run(
        [str(TOMESD013_PYTHON), str(ROOT / "scripts" / "compare_worker.py")], input=json.dumps(spec),
        capture_output=True, text=True, timeout=300, env=_without_this_project(),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["tomesd"] == "0.1.3"  # the original package ran, not this project's
    by_label = {s["label"]: s for s in result["settings"]}
    assert by_label["r0"]["deviation"] == 0.0  # 0.1.3 at ratio 0 is exact too
    assert by_label["r0.5"]["deviation"] > 0  # and it merged at 0.5 (full-resolution blocks, its default)


def test_worker_refuses_an_unknown_mode():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_worker.py")],
                          input=json.dumps({"mode": "dance"}), capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "unknown mode 'dance'; accepted: speed, images" in done.stderr
