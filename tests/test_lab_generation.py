"""tomesd.lab.generation: settings validation, one timed generation per ratio, the pipeline's patch state."""

from __future__ import annotations

import numpy as np
import pytest

import tomesd
from tomesd.lab.generation import GenerationSettings, generate, parse_option, patch_option_defaults, set_ratio

SETTINGS = GenerationSettings("a red cat", steps=2, width=32, height=32)


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    import tiny

    pipeline = tiny.sd_pipeline(tmp_path_factory.mktemp("tok"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": "  "}, "prompt is empty"),
        ({"steps": 0}, "steps=0 is out of range"),
        ({"steps": 1001}, "out of range"),
        ({"width": 30}, "width=30 must be a positive multiple of 8"),
        ({"height": -8}, "height=-8"),
        ({"guidance": -1.0}, "negative"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GenerationSettings(**{"prompt": "x", **kwargs})


def test_options_offered_are_the_patchers_minus_ratio():
    from tomesd.patch.diffusers import OPTIONS

    options = patch_option_defaults()
    assert "ratio" not in options and options == {k: v for k, v in OPTIONS.items() if k != "ratio"}


@pytest.mark.parametrize("name, text, value", [
    ("merge_mlp", "True", True), ("merge_mlp", "0", False), ("sx", " 3 ", 3), ("matching", "local", "local"),
    ("max_downsample", "auto", None), ("max_downsample", "", None), ("max_downsample", "2", 2),
])
def test_option_text_is_typed_like_the_option(name, text, value):
    assert parse_option(name, text) == value


@pytest.mark.parametrize("name, text, message", [
    ("merge_mlp", "maybe", "expected true or false"),
    ("sx", "two", "expected a int"),
    ("max_downsample", "big", "expected 'auto' or an integer"),
    ("speed", "1", "unknown patch option 'speed'"),
])
def test_bad_option_text_is_refused(name, text, message):
    with pytest.raises(ValueError, match=message):
        parse_option(name, text)


def test_ratio_zero_is_the_untouched_pipeline_and_exact(pipe):
    first = generate(pipe, SETTINGS, seed=3, ratio=0.0)
    merged = generate(pipe, SETTINGS, seed=3, ratio=0.5, options={"min_tokens": 0})  # the toy U-Net: 256 tokens
    assert tomesd.is_patched(pipe)
    again = generate(pipe, SETTINGS, seed=3, ratio=0.0)
    assert not tomesd.is_patched(pipe)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert not np.array_equal(np.asarray(first.image), np.asarray(merged.image))
    assert first.run.steps == 2 and first.run.its > 0
    assert first.memory_kind == "process_rss" and first.peak_mib > 0


def test_a_failed_generation_leaves_the_pipeline_unpatched(pipe):
    def cancel(step, total):
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        generate(pipe, SETTINGS, seed=0, ratio=0.5, on_step=cancel)
    assert not tomesd.is_patched(pipe)


def test_bad_ratio_is_refused_and_pipeline_left_unpatched(pipe):
    with pytest.raises(ValueError):
        set_ratio(pipe, 1.5)
    assert not tomesd.is_patched(pipe)
