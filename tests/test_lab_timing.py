"""tomesd.lab.timing: interleaving order, medians and speedups, pipeline step timing, peak memory."""

from __future__ import annotations

import pytest
import torch

from tomesd.lab.timing import PeakMemory, Timing, time_interleaved, timed_pipeline_call


def test_settings_are_timed_in_turns_after_untimed_warmup_rounds():
    calls = []
    timings = time_interleaved(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        repeats=3, warmup=1, prepare={"b": lambda: calls.append("prepare b")},
    )
    assert calls == ["a", "prepare b", "b"] * 4
    assert {name: len(t.seconds) for name, t in timings.items()} == {"a": 3, "b": 3}
    assert all(s > 0 for t in timings.values() for s in t.seconds)


def test_alternating_rounds_reverse_the_order_every_other_round():
    calls = []
    timings = time_interleaved({name: (lambda name=name: calls.append(name)) for name in "abc"},
                               repeats=2, warmup=1, alternate=True)
    assert "".join(calls) == "abc" + "cba" + "abc"  # warm-up, then two timed rounds
    assert {name: len(t.seconds) for name, t in timings.items()} == {"a": 2, "b": 2, "c": 2}


def test_median_and_speedup():
    slow, fast = Timing((3.0, 1.0, 2.0)), Timing((0.5, 2.0, 1.0))
    assert slow.median == 2.0 and fast.median == 1.0
    assert fast.speedup_over(slow) == 2.0


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}])
def test_bad_repeats_are_refused(kwargs):
    with pytest.raises(ValueError, match="repeats"):
        time_interleaved({"a": lambda: None}, **kwargs)


def test_no_settings_is_refused():
    with pytest.raises(ValueError, match="no settings"):
        time_interleaved({})


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    import tiny

    pipeline = tiny.sd_pipeline(tmp_path_factory.mktemp("tok"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _call(pipe, **kwargs):
    return timed_pipeline_call(pipe, prompt="a cat", num_inference_steps=3, height=32, width=32,
                               generator=torch.Generator().manual_seed(0), **kwargs)


def test_pipeline_call_counts_steps_and_times_the_denoising_loop(pipe):
    seen = []
    output, run = _call(pipe, on_step=lambda step, total: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert run.steps == 3 and 0 < run.denoise_seconds < run.seconds
    assert run.its == pytest.approx(3 / run.denoise_seconds)
    assert output.images[0].size == (32, 32)
    assert not pipe.unet._forward_pre_hooks  # the timing hook is removed


def test_on_step_can_abort_and_leaves_no_hook(pipe):
    def abort(step, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _call(pipe, on_step=abort)
    assert not pipe.unet._forward_pre_hooks


def test_peak_memory_on_cpu_sees_a_large_allocation():
    with PeakMemory("cpu", interval=0.001) as before:
        pass
    with PeakMemory("cpu", interval=0.001) as memory:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB
        block.add_(1)
        import time

        time.sleep(0.05)
        del block
    assert memory.kind == "process_rss" and before.mib > 0
    assert memory.mib >= before.mib + 32
