"""The bookkeeping timm and transformers share (tomesd.patch.sequence): schedules, set_r, run-time checks."""

from __future__ import annotations

import pytest
import torch

from tomesd.patch import sequence
from tomesd.patch.sequence import LayerMerge, SequenceMerge


def patch_state(schedule: list[int], protected: int = 1) -> SequenceMerge:
    return SequenceMerge(sequence.layer_merges(schedule), protected, True, False, {"r": schedule})


def test_set_r_gives_each_layer_its_r_and_records_the_option():
    info = patch_state([1, 1, 1])
    sequence.set_r(info, (2, 0.5), num_tokens=17)
    assert [layer.r for layer in info.layers] == [1, 2, 3]
    assert [layer.index for layer in info.layers] == [0, 1, 2]
    assert info.options["r"] == (2, 0.5)


@pytest.mark.parametrize("r,error", [([1, 9, 1], ValueError), ([1, 1], ValueError), ("2", TypeError)])
def test_a_refused_set_r_changes_nothing(r, error):
    info = patch_state([1, 1, 1])
    with pytest.raises(error):
        sequence.set_r(info, r, num_tokens=17)
    assert [layer.r for layer in info.layers] == [1, 1, 1] and info.options["r"] == [1, 1, 1]


def test_the_run_time_check_names_the_layer_and_the_familys_set_r():
    # 5 tokens with 1 protected: 2 merge candidates
    sequence.check_layer_tokens(LayerMerge(3, 2), num_tokens=5, protected=1, set_r_name="x.set_r")
    with pytest.raises(ValueError, match=r"layer 3 would merge r=3 of 5 tokens \(at most 2\): lower r with x\.set_r"):
        sequence.check_layer_tokens(LayerMerge(3, 3), num_tokens=5, protected=1, set_r_name="x.set_r")


def test_merge_sources_and_reset():
    info = patch_state([1], protected=0)
    with pytest.raises(ValueError, match="trace_source=True"):
        sequence.merge_sources(info)
    info.trace_source, info.source, info.size = True, torch.ones(1, 2, 3), torch.ones(1, 2, 1)
    assert sequence.merge_sources(info) is info.source
    info.reset()
    assert info.source is None and info.size is None and info.metric is None and sequence.merge_sources(info) is None


def test_log_size_bias_is_the_log_size_per_key():
    size = torch.tensor([[[1.0], [2.0], [4.0]]])  # (1, 3, 1)
    bias = sequence.log_size_bias(size)
    assert bias.shape == (1, 1, 1, 3)
    assert torch.equal(bias.flatten(), size.log().flatten())


@pytest.mark.parametrize("tokens,layers,largest", [(197, 12, 15), (257, 12, 19), (577, 24, 23)])
def test_the_refusal_names_the_largest_constant_r_the_model_allows(tokens, layers, largest):
    # ViT-B/16 at 224 px, DINOv2-B/14 at 224 px, CLIP-L/14 at 336 px (one class token each): the named r
    # fits every layer and one more does not, although the overflow is found only in a late layer.
    sequence.check_schedule([largest] * layers, tokens, 1, largest)
    with pytest.raises(ValueError, match=rf"in layer {layers - 1},.*the largest constant r for this model is {largest}$"):
        sequence.check_schedule([largest + 1] * layers, tokens, 1, largest + 1)
