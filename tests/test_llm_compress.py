"""Prompt compression: block means without padding, masks, positions and padding sides (tomesd.llm.compress)."""

from __future__ import annotations

import pytest
import torch

from tests.llm_models import HIDDEN, padded_batch, tiny_gemma3, tiny_llama, tiny_qwen
from tomesd.llm import KTokenEncoder, compress_prompt, mean_merge
from tomesd.llm.compress import IGNORE_INDEX, pack


def _real(prompt, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The real (unpadded) embeddings and positions of one row of a compressed prompt."""
    keep = prompt.attention_mask[row].bool()
    return prompt.inputs_embeds[row, keep], prompt.position_ids[row, keep]


def test_mean_merge_is_block_mean_without_padding():
    x = torch.randn(2, 7, 5)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0]])
    merged, merged_mask = mean_merge(x, mask, 3)
    assert merged.shape == (2, 3, 5)
    torch.testing.assert_close(merged[0, 2], x[0, 6])  # the last partial block is merged on its own
    torch.testing.assert_close(merged[1, 1], x[1, 3:5].mean(0))  # padding is not averaged in
    assert merged_mask.tolist() == [[1, 1, 1], [1, 1, 0]]


def test_k1_keeps_embeddings_exactly():
    model = tiny_qwen()
    ids, mask = padded_batch([9, 6], "right")
    prompt = compress_prompt(model, ids, 1, mask, padding_side="right")
    assert torch.equal(prompt.attention_mask, mask)
    assert torch.equal(prompt.inputs_embeds[mask.bool()], model.get_input_embeddings()(ids)[mask.bool()])


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("out_side", ["left", "right"])
def test_batch_padding_does_not_change_a_prompt(side, out_side):
    """Every sample's compressed prompt equals the one it gets alone, whatever the padding sides."""
    model = tiny_qwen()
    ids, mask = padded_batch([13, 6, 9], side)
    tail, tail_mask = padded_batch([3, 1, 2], side, seed=1)
    batch = compress_prompt(model, ids, 4, mask, tail, tail_mask, padding_side=out_side)
    assert batch.inputs_embeds.shape == (3, 4 + 3, HIDDEN)  # ceil(13 / 4) merged + 3 tail positions
    for row in range(3):
        alone = compress_prompt(model, ids[row : row + 1, mask[row].bool()], 4,
                                tail_ids=tail[row : row + 1, tail_mask[row].bool()])
        embeds, positions = _real(batch, row)
        assert torch.equal(embeds, alone.inputs_embeds[0])
        assert positions.tolist() == list(range(embeds.shape[0]))
    real_lengths = batch.attention_mask.sum(1).tolist()
    assert real_lengths == [4 + 3, 2 + 1, 3 + 2]
    padding = batch.attention_mask == 0
    assert (batch.position_ids[padding] == 0).all()
    if out_side == "left":
        assert (batch.attention_mask[:, -1] == 1).all()  # generation continues from the last column
    else:
        assert (batch.attention_mask[:, 0] == 1).all()


@pytest.mark.parametrize("make_model", [tiny_qwen, tiny_llama, tiny_gemma3])
def test_padded_batch_gives_the_same_next_token_logits(make_model):
    """Masks and positions are right: a left-padded compressed batch predicts what each prompt predicts alone."""
    model = make_model()
    ids, mask = padded_batch([15, 8], "right")
    tail, tail_mask = padded_batch([4, 2], "right", seed=1)
    batch = compress_prompt(model, ids, 4, mask, tail, tail_mask)
    with torch.no_grad():
        logits = model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask,
                       position_ids=batch.position_ids).logits[:, -1]  # (B, V)
        for row in range(2):
            alone = compress_prompt(model, ids[row : row + 1, mask[row].bool()], 4,
                                    tail_ids=tail[row : row + 1, tail_mask[row].bool()])
            expected = model(inputs_embeds=alone.inputs_embeds).logits[0, -1]
            torch.testing.assert_close(logits[row], expected, atol=1e-5, rtol=1e-4)


def test_tail_labels_follow_the_tail():
    model = tiny_qwen()
    ids, mask = padded_batch([8, 5], "left")
    tail = torch.tensor([[10, 11, 12], [20, 21, 0]])
    tail_mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    labels = torch.tensor([[IGNORE_INDEX, 11, 12], [IGNORE_INDEX, 21, 33]])
    prompt = compress_prompt(model, ids, 4, mask, tail, tail_mask, labels, padding_side="right")
    assert prompt.labels.tolist() == [
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 11, 12],
        [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 21, IGNORE_INDEX],  # padded tail label dropped
    ]
    assert compress_prompt(model, ids, 4, mask, tail, tail_mask).labels is None


def test_pack_keeps_order_and_moves_padding():
    mask = torch.tensor([[0, 1, 0, 1, 1]])
    values = torch.tensor([[5, 6, 7, 8, 9]])
    assert [t.tolist() for t in pack(mask, values, side="left")] == [[[0, 0, 1, 1, 1]], [[5, 7, 6, 8, 9]]]
    assert [t.tolist() for t in pack(mask, values, side="right")] == [[[1, 1, 1, 0, 0]], [[6, 8, 9, 5, 7]]]


@pytest.mark.parametrize("k, error, match", [
    (0, ValueError, "k must be >= 1, got 0"),
    (-2, ValueError, "k must be >= 1"),
    (2.0, TypeError, "must be an int"),
    (7, ValueError, "k=7 is larger than prompt 1, which has 5"),
])
def test_bad_block_length_is_rejected(k, error, match):
    ids, mask = padded_batch([8, 5], "right")
    with pytest.raises(error, match=match):
        compress_prompt(tiny_qwen(), ids, k, mask)


def test_encoder_must_fit_the_model():
    model = tiny_qwen()
    ids = torch.randint(3, 60, (1, 8))
    with pytest.raises(ValueError, match="hidden size 48 does not match the model's embedding size 32"):
        compress_prompt(model, ids, 4, encoder=KTokenEncoder(48, 4))
    with pytest.raises(ValueError, match="merges blocks of k=2 tokens, but k=4"):
        compress_prompt(model, ids, 4, encoder=KTokenEncoder(HIDDEN, 2))
    with pytest.raises(ValueError, match="padding side"):
        compress_prompt(model, ids, 4, padding_side="middle")


def test_padding_only_context_says_what_to_pass():
    """It used to advise "use k <= 0", a block length that does not exist."""
    ids, mask = padded_batch([6, 5], "right")
    mask[1] = 0
    with pytest.raises(ValueError, match="prompt 1 has no real token .* every context needs at least one token"):
        compress_prompt(tiny_qwen(), ids, 1, mask)


def test_empty_batch_says_what_to_pass():
    with pytest.raises(ValueError, match="the batch is empty; pass at least one context"):
        compress_prompt(tiny_qwen(), torch.zeros(0, 4, dtype=torch.long), 2)


def test_head_ids_of_a_wrong_shape_are_refused():
    ids, mask = padded_batch([6, 5], "right")
    for head in (torch.tensor([2]), torch.tensor([[2], [2], [2]])):
        with pytest.raises(ValueError, match=r"head_ids must be \(1, H\) or \(B=2, H\)"):
            compress_prompt(tiny_qwen(), ids, 2, mask, head_ids=head)
