"""tomesd/lab/dit_bench.py at toy widths: it runs every architecture and reports every figure (the figures
themselves are only meaningful on a quiet GPU at full width)."""

from __future__ import annotations

import pytest
import torch

from tomesd.lab import dit_bench

TINY = dict(depth=1, repeats=1, warmup=0, device="cpu", dtype=torch.float32, tiny=True)


@pytest.mark.parametrize("name", list(dit_bench.SPECS))
def test_every_architecture_is_timed_whole_and_per_block_with_its_limit(name):
    spec = dit_bench.SPECS[name]
    result = dit_bench.bench_model(name, ratios=(0.5,), **TINY)
    assert sorted(b.block for b in result.blocks) == sorted(spec.blocks)
    assert result.unpatched > 0 and all(0 < b.limit <= 1 and b.unpatched > 0 for b in result.blocks)
    if spec.patched:
        assert set(result.patched) == {0.5} and all(set(b.patched) == {0.5} for b in result.blocks)
        assert 0 < result.deviation[0.5] < 1  # merging changes the output, a little
    else:  # refused by the patch: the limit only
        assert result.patched == {} and result.deviation == {}
    table = dit_bench.format_bench(result)
    assert "| whole model |" in table and all(f"| {b} |" in table for b in spec.blocks)
    rows = [line for line in table.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in rows}) == 1, rows  # every row as wide as the header


def test_the_command_line_prints_a_table(capsys):
    dit_bench.main(["--model", "pixart", "--tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "1",
                    "--warmup", "0", "--depth", "1", "--ratios", "0.3", "0.5"])
    out = capsys.readouterr().out
    assert "PixArt" in out and "ratio 0.3 ms" in out and "| BasicTransformerBlock |" in out


def test_the_command_line_appends_its_tables_and_setting_to_out(tmp_path):
    out = tmp_path / "dit" / "benchmark.md"
    for model in ("pixart", "animatediff"):
        dit_bench.main(["--model", model, "--tiny", "--device", "cpu", "--dtype", "float32", "--repeats", "1",
                        "--warmup", "0", "--depth", "1", "--threads", "1", "--out", str(out)])
    text = out.read_text()
    assert text.count("| whole model |") == 2 and "AnimateDiff" in text and "latent frames run" in text
    assert text.count("cpu, float32, 1 threads, batch 1, median of 1 interleaved") == 2


@pytest.mark.parametrize("option,message", [("min_tokens", "expects NAME=VALUE"), ("ratios=1", "unknown patch option"),
                                            ("min_tokens=many", "expected a int")])
def test_a_bad_option_is_a_usage_error_before_anything_is_built(option, message, capsys):
    with pytest.raises(SystemExit) as stop:
        dit_bench.main(["--model", "pixart", "--tiny", "--device", "cpu", "--option", option])
    assert stop.value.code == 2 and message in capsys.readouterr().err
