"""The speed worker that times the U-Net for both this project and tomesd 0.1.3 (tiny config here)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "sample_size": 16, "block_out_channels": [32, 64], "layers_per_block": 1, "norm_num_groups": 8,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"], "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32, "attention_head_dim": 8,
}


def test_worker_reports_interleaved_speedups_and_exact_ratio_zero():
    spec = {
        "config": TINY, "latent": 16, "batch": 2, "threads": 1, "repeats": 2,
        "settings": [{"label": "r0", "options": {"ratio": 0.0}}, {"label": "r0.5", "options": {"ratio": 0.5}}],
    }
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "unet_speed_worker.py")], input=json.dumps(spec),
        capture_output=True, text=True, check=True, timeout=300,
    )
    result = json.loads(done.stdout)
    assert result["threads"] == 1 and len(result["baseline_s"]) == 2
    by_label = {s["label"]: s for s in result["settings"]}
    assert by_label["r0"]["deviation"] == 0.0  # ratio 0 is bit-identical
    assert by_label["r0.5"]["deviation"] > 0
    assert all(len(s["times_s"]) == 2 and s["speedup"] > 0 for s in by_label.values())
