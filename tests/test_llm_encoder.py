"""The K-token encoder: exactly the mean at initialisation, trainable, order-aware (tomesd.llm.encoder)."""

from __future__ import annotations

import pytest
import torch

from tests.llm_models import HIDDEN, padded_batch, tiny_qwen
from tomesd.llm import KTokenEncoder, compress_prompt, mean_merge


def test_untrained_encoder_is_exactly_the_mean_with_padding():
    torch.manual_seed(0)
    x = torch.randn(3, 11, 16)  # 11 tokens: two full blocks of 4 and a partial one
    mask = torch.ones(3, 11, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 9:] = 0
    merged, merged_mask = KTokenEncoder(16, 4)(x, mask)
    expected, expected_mask = mean_merge(x, mask, 4)
    assert torch.equal(merged, expected)
    assert torch.equal(merged_mask, expected_mask)
    assert merged_mask.tolist() == [[1, 1, 1], [1, 1, 0], [1, 1, 1]]


def test_untrained_encoder_compresses_a_prompt_exactly_like_the_mean():
    model = tiny_qwen()
    ids, mask = padded_batch([10, 7], "left")
    with_encoder = compress_prompt(model, ids, 4, mask, encoder=KTokenEncoder(HIDDEN, 4))
    training_free = compress_prompt(model, ids, 4, mask)
    assert torch.equal(with_encoder.inputs_embeds, training_free.inputs_embeds)
    assert torch.equal(with_encoder.attention_mask, training_free.attention_mask)


def test_encoder_learns_and_sees_token_order():
    torch.manual_seed(0)
    encoder = KTokenEncoder(8, 2)
    x = torch.randn(4, 6, 8)
    target = torch.randn(4, 3, 8)
    optimizer = torch.optim.SGD(encoder.parameters(), lr=0.5)
    first = None
    for _ in range(20):
        loss = (encoder(x)[0] - target).pow(2).mean()
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.9 * first
    swapped = x[:, [1, 0, 3, 2, 5, 4]]  # same blocks, each block's two tokens swapped
    assert torch.equal(mean_merge(x, torch.ones(4, 6), 2)[0], mean_merge(swapped, torch.ones(4, 6), 2)[0])
    assert not torch.allclose(encoder(x)[0], encoder(swapped)[0])


@pytest.mark.parametrize("k, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)])
def test_bad_block_length(k, error):
    with pytest.raises(error, match="block length k"):
        KTokenEncoder(8, k)


def test_wrong_embedding_width_is_rejected():
    with pytest.raises(ValueError, match="expected embeddings of width 8"):
        KTokenEncoder(8, 2)(torch.randn(1, 4, 6))
