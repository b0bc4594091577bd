"""The speed/quality frontier: parsing, the front, the defaults rule, resumable parts, and one end-to-end run
on a tiny U-Net config and a tiny pipeline (this environment's interpreter standing in for tomesd 0.1.3's)."""

import json
import math
import sys

import pytest

from tomesd.cli.frontier import main as frontier_main
from tomesd.lab import frontier
from tomesd.lab.frontier import OURS, Candidate, Parts, SpeedSpec, default_rule, mark_frontier, parse_speed


def test_speed_specs_parse_and_bad_ones_are_refused():
    assert parse_speed("sd15:512") == SpeedSpec("sd15", 512, None)
    assert parse_speed("sdxl:1024:0.5+0.3") == SpeedSpec("sdxl", 1024, (0.3, 0.5))
    spec = parse_speed("sd15:1024::default+no-mlp")
    assert spec == SpeedSpec("sd15", 1024, None, ("default", "no-mlp"))
    assert spec.selects(Candidate("tomesd 0.1.3", "default", 0.7)) and not spec.selects(Candidate(OURS, "global", 0.5))
    for text, message in (("sd3:512", "architecture"), ("sd15:500", "multiple of 8"), ("sd15", "multiple of 8"),
                          ("sd15:512:x", "numbers"), ("sd15:512:1.5", r"in \(0, 1\)")):
        with pytest.raises(ValueError, match=message):
            parse_speed(text)


def _candidate(variant, speed, error, implementation=OURS, ratio=0.5):
    return Candidate(implementation, variant, ratio, speedup={"sd15:512": speed}, quality={"hf_error": error,
                                                                                         "psnr": 40 - 10 * error})


def test_the_frontier_holds_exactly_the_undominated_candidates():
    fast_rough, slow_clean, middle, dominated, tie = (
        _candidate("a", 1.6, 0.5), _candidate("b", 1.1, 0.05), _candidate("c", 1.3, 0.2),
        _candidate("d", 1.2, 0.3), _candidate("e", 1.3, 0.2, ratio=0.3))
    unmeasured = Candidate(OURS, "f", 0.5, quality={"hf_error": 0.0})  # no speed: not part of this front
    candidates = [fast_rough, slow_clean, middle, dominated, tie, unmeasured]
    mark_frontier(candidates, "sd15:512")
    assert [c.frontier.get("sd15:512") for c in candidates] == [True, True, True, False, True, None]


def test_the_defaults_rule_names_each_criterion_and_its_figures():
    ours = _candidate("default", 1.35, 0.1, ratio=frontier.OPTIONS["ratio"])  # the rule reads the default ratio
    ours.speedup["sdxl:1024"] = 1.4
    original = _candidate("default", 1.1, 0.2, implementation="tomesd 0.1.3")  # 0.1.3 is compared at 0.5
    candidates = [ours, original, _candidate("no-mlp", 1.2, 0.05)]
    mark_frontier(candidates, "sd15:512")
    checks = {criterion: (passed, figures) for criterion, passed, figures in default_rule(candidates, "tomesd 0.1.3")}
    assert checks["on the frontier at sd15:512"][0] is True
    assert checks["psnr no worse than tomesd 0.1.3 at 0.5"] == (True, "39.000 vs 38.000")
    assert checks["hf_error no worse than tomesd 0.1.3 at 0.5"] == (True, "0.100 vs 0.200")
    assert checks["sd15:512 speedup >= 1.3x"] == (True, "1.350x")
    assert checks["sdxl:1024 speedup >= 1.5x"] == (False, "1.400x")
    # a cleaner and faster candidate takes the defaults off the front; without 0.1.3 that check is unknown
    candidates.append(_candidate("better", 1.4, 0.09))
    mark_frontier(candidates, "sd15:512")
    checks = {criterion: passed for criterion, passed, _ in default_rule(candidates, None)}
    assert checks["on the frontier at sd15:512"] is False
    assert checks["images changed no more than tomesd 0.1.3 at 0.5"] is None


def test_a_setting_is_keyed_by_every_option_it_runs_with(monkeypatch):
    default = Candidate(OURS, "default", 0.5)
    assert default.patch_options == {**frontier.OPTIONS, "ratio": 0.5}
    assert default.key == Candidate(OURS, "renamed", 0.5, {"merge_mlp": frontier.OPTIONS["merge_mlp"]}).key
    assert default.key != Candidate(OURS, "default", 0.3).key
    assert Candidate("tomesd 0.1.3", "default", 0.5).patch_options == {"ratio": 0.5}  # its defaults never move
    before = default.key
    monkeypatch.setitem(frontier.OPTIONS, "kv_downsample", frontier.OPTIONS["kv_downsample"] + 1)
    assert default.key != before  # a changed default is a new setting, never the old one's measurements


def test_parts_are_reused_for_the_same_spec_and_measured_again_for_another(tmp_path):
    parts, calls = Parts(tmp_path / "parts"), []

    def measure():
        calls.append(1)
        return {"value": len(calls)}

    assert parts.get("p", {"a": 1}, measure) == {"value": 1}
    assert parts.get("p", {"a": 1}, measure) == {"value": 1} and len(calls) == 1
    assert Parts(tmp_path / "parts").get("p", {"a": 2}, measure) == {"value": 2}  # the spec changed
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == ["p.json"]  # nothing half-written left


def test_a_failed_measurement_leaves_no_part(tmp_path):
    parts = Parts(tmp_path / "parts")

    def fail():
        raise RuntimeError("stopped")

    with pytest.raises(RuntimeError):
        parts.get("p", {}, fail)
    assert not list((tmp_path / "parts").iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--ratios", "0", "0.5"], "always measured"),
    (["--variant", "default:merge_mlp=false"], "labels must differ"),
    (["--variant", "x:nonsense=1"], "nonsense"),
    (["--speed", "sd2:512"], "architecture"),
    (["--speed", "sd15:512:0.5:nothing"], "no variant nothing"),
    (["--count", "0"], ">= 1"),
    (["--compare-013", "/nonexistent/python"], "setup_tomesd013.sh"),
])
def test_bad_arguments_exit_with_a_message_before_measuring(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        frontier_main([*argv, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_folder_that_is_no_pipeline_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        frontier_main(["--model", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "no model_index.json" in capsys.readouterr().err


def test_frontier_end_to_end_on_tiny_models_resumes_from_its_parts(tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    import tomesd.demo
    from test_compare_worker import TINY

    monkeypatch.setattr(tomesd.demo, "DEFAULT_STEPS", 2)
    monkeypatch.setattr(tomesd.demo, "DEFAULT_SIZE", 64)
    monkeypatch.setitem(frontier.UNET_CONFIGS, "sd15", TINY)
    out = tmp_path / "frontier"
    ratio = frontier.OPTIONS["ratio"]  # the defaults rule reads our default ratio
    argv = ["--model", str(tiny_pipeline_dir), "--ratios", f"{ratio:g}", "--variant", "all:min_tokens=0", "--speed",
            "sd15:128", "--count", "2", "--repeats", "1", "--threads", "1", "--compare-013", sys.executable,
            "--out", str(out)]
    assert frontier_main(argv) == 0
    first = capsys.readouterr()
    report = json.loads((out / "frontier.json").read_text())
    by_name = {(c["implementation"], c["variant"]): c for c in report["candidates"]}
    assert len(by_name) == len(frontier.STANDARD_VARIANTS) + 2  # + "all", + tomesd 0.1.3's
    merged = by_name[(OURS, "all")]
    assert merged["deviation"]["sd15:128"] > 0 and merged["quality"]["psnr"] < math.inf  # it merged
    assert merged["quality"]["hf_error"] > 0
    assert 0 <= merged["quality"]["hf_error_median"] <= merged["quality"]["hf_error_worst"]
    # the tiny U-Net at 128 px has fewer tokens than min_tokens: the defaults merge nothing there, exactly;
    # the tiny pipeline's VAE halves its 64 px images: a 32 x 32 latent, exactly min_tokens, so they merge
    assert by_name[(OURS, "default")]["deviation"]["sd15:128"] == 0
    assert by_name[(OURS, "default")]["quality"]["hf_error"] > 0
    assert all(c["speedup"]["sd15:128"] > 0 and set(c["frontier"]) == {"sd15:128"} for c in by_name.values())
    assert 0 <= report["unpatched"]["adherence"] <= 1
    rule = {criterion: passed for criterion, passed, _ in report["rule"]}
    assert rule["sdxl:1024 speedup >= 1.5x"] is None  # not measured, and said so
    assert (out / "frontier.png").stat().st_size > 0 and (out / "frontier_images.png").stat().st_size > 0
    assert (out / "frontier.md").read_text() in first.out
    assert "measuring" in first.err and "reusing" not in first.err
    # the same command again measures nothing: every part is reused, the report is the same
    assert frontier_main(argv) == 0
    again = capsys.readouterr()
    # one part per candidate's images, one for each implementation's unpatched images, one per speed run
    assert len(list((out / "parts").iterdir())) == len(by_name) + 2 + 2
    assert "measuring" not in again.err and again.err.count("reusing") == len(by_name) + 2
    assert json.loads((out / "frontier.json").read_text())["candidates"] == report["candidates"]
    # one more variant: only its images and its timing are measured, in a part of their own
    assert frontier_main([*argv, "--variant", "kv2:min_tokens=0,kv_downsample=2"]) == 0
    more = capsys.readouterr().err
    kv2_key = Candidate(OURS, "kv2", ratio, {"min_tokens": 0, "kv_downsample": 2}).key
    assert more.count("measuring") == 2 and f"images-ours-{kv2_key}: measuring" in more
    assert "speed-ours-sd15-128-1: measuring" in more
    # the same options under another label are found measured: nothing is drawn or timed again
    assert frontier_main([*argv, "--variant", "kv2:min_tokens=0,kv_downsample=2",
                          "--variant", "same:kv_downsample=2,min_tokens=0"]) == 0
    assert "measuring" not in capsys.readouterr().err
    kv2 = next(c for c in json.loads((out / "frontier.json").read_text())["candidates"] if c["variant"] == "kv2")
    assert kv2["deviation"]["sd15:128"] > 0 and kv2["quality"]["psnr"] < math.inf
    # one ARCH:PX selected twice (other variants at each): one column, only the selected settings timed there
    speed_at = argv.index("--speed") + 1
    twice = [*argv[:speed_at], "sd15:128::all", "sd15:128::kv2", *argv[speed_at + 1:],
             "--variant", "kv2:min_tokens=0,kv_downsample=2"]
    assert frontier_main(twice) == 0
    assert "measuring" not in capsys.readouterr().err  # both were timed before
    table = (out / "frontier.md").read_text()
    assert table.count("sd15:128 speedup") == 1
    timed = {c["variant"] for c in json.loads((out / "frontier.json").read_text())["candidates"] if c["speedup"]}
    assert timed == {"all", "kv2"}
