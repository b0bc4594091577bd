"""Properties of the shared merge core (exact where merging is exact, e.g. shapes, sizes, unmerged tokens)."""

import pytest
import torch

from tomesd.merge import (
    bipartite_soft_matching,
    bipartite_soft_matching_random2d,
    block_merge,
    merge_source,
    merge_wavg,
    random2d_partition,
    sequence_partition,
)


def _tokens(batch=2, n=64, c=8, seed=0, dtype=torch.float32):
    return torch.randn(batch, n, c, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _untouched(plan):
    """(B, N) mask of tokens a merge leaves exactly as they were: kept, unmerged candidates, and
    destinations that received nothing."""
    batch = plan.unm.shape[0]
    mask = torch.ones(batch, plan.num_tokens, dtype=torch.bool)
    mask.scatter_(1, plan.src_idx[plan.merged], False)
    mask.scatter_(1, plan.dst_idx[plan.target], False)
    return mask


@pytest.mark.parametrize("h,w,sy,sx", [(8, 8, 2, 2), (7, 5, 2, 2), (9, 6, 3, 2), (1, 1, 2, 2)])
def test_random2d_partition_covers_every_token_once_with_one_destination_per_cell(h, w, sy, sx):
    keep, src, dst = random2d_partition(h, w, sy, sx, torch.Generator().manual_seed(1))
    assert keep.numel() == 0
    assert sorted(torch.cat([src, dst]).tolist()) == list(range(h * w))
    assert dst.numel() == (h // sy) * (w // sx)
    cells = {(int(i) // w // sy, int(i) % w // sx) for i in dst}
    assert len(cells) == dst.numel()  # no two destinations share a cell


def test_random2d_partition_draws_only_from_its_own_generator():
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = random2d_partition(8, 8, 2, 2, torch.Generator().manual_seed(5))[2]
    assert torch.equal(torch.random.get_rng_state(), before)  # user RNG untouched
    b = random2d_partition(8, 8, 2, 2, torch.Generator().manual_seed(5))[2]
    c = random2d_partition(8, 8, 2, 2, torch.Generator().manual_seed(6))[2]
    assert torch.equal(a, b) and not torch.equal(a, c)
    first = random2d_partition(8, 8, 2, 2, None)[2]
    assert first.tolist() == [r * 8 + c for r in range(0, 8, 2) for c in range(0, 8, 2)]


def test_sequence_partition_protects_leading_tokens_and_alternates():
    keep, src, dst = sequence_partition(10, protected=2)
    assert keep.tolist() == [0, 1] and src.tolist() == [2, 4, 6, 8] and dst.tolist() == [3, 5, 7, 9]


@pytest.mark.parametrize("r", [0, 1, 10, 48])
def test_random2d_merge_shapes_and_unmerge_restores_untouched_tokens(r):
    x = _tokens(n=64)
    plan = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, r, torch.Generator().manual_seed(0))
    merged = plan.merge(x)
    assert merged.shape == (2, 64 - r, 8) and plan.r == r
    back = plan.unmerge(merged)
    assert back.shape == x.shape
    mask = _untouched(plan)
    assert torch.equal(back[mask], x[mask])
    # merged sources take exactly their destination's merged value
    src_pos = plan.src_idx[plan.merged]
    dst_pos = plan.dst_idx[plan.target]
    assert torch.equal(back.gather(1, src_pos[..., None].expand(-1, -1, 8)), back.gather(1, dst_pos[..., None].expand(-1, -1, 8)))


def test_r_is_clamped_to_the_number_of_candidates():
    x = _tokens(n=64)
    plan = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, 1000)
    assert plan.r == 48 and plan.merge(x).shape[1] == 16


def test_mean_merge_averages_each_destination_with_its_sources():
    x = _tokens(batch=1, n=16, c=3)
    plan = bipartite_soft_matching(x, r=4)
    merged = plan.merge(x)
    d = int(plan.target[0, 0])
    members = [int(plan.dst_idx[d])] + [int(plan.src_idx[s]) for s, t in zip(plan.merged[0], plan.target[0]) if t == d]
    expected = x[0, members].mean(0)
    out_row = plan.keep_idx.numel() + plan.unm.shape[1] + d
    torch.testing.assert_close(merged[0, out_row], expected)  # float summation order: tolerance


def test_matching_merges_the_most_similar_pairs():
    # two exact duplicates (candidate 0 of destination 1) must be the first merge
    x = _tokens(batch=1, n=8, c=4)
    x[0, 0] = x[0, 3]  # position 0 is a candidate, 3 a destination
    plan = bipartite_soft_matching(x, r=1)
    assert plan.src_idx[plan.merged[0, 0]] == 0 and plan.dst_idx[plan.target[0, 0]] == 3


def test_protected_tokens_stay_first_and_unchanged():
    x = _tokens(n=20)
    plan = bipartite_soft_matching(x, r=5, protected=2)
    merged = plan.merge(x)
    assert torch.equal(merged[:, :2], x[:, :2])
    assert merged.shape[1] == 15


def test_size_weighted_average_keeps_total_size_and_weighted_sum():
    x = _tokens(n=32)
    plan = bipartite_soft_matching(x, r=8)
    y, size = merge_wavg(plan, x)
    assert torch.equal(size.sum(1), torch.full((2, 1), 32.0))
    torch.testing.assert_close((y * size).sum(1), x.sum(1), rtol=1e-5, atol=1e-5)  # float sums
    plan2 = bipartite_soft_matching(y, r=4)
    y2, size2 = merge_wavg(plan2, y, size)
    assert torch.equal(size2.sum(1), torch.full((2, 1), 32.0))
    torch.testing.assert_close((y2 * size2).sum(1), x.sum(1), rtol=1e-5, atol=1e-4)


def test_source_tracing_partitions_the_original_tokens():
    x = _tokens(n=24)
    plan = bipartite_soft_matching(x, r=6, protected=1)
    source = merge_source(plan, None)
    assert source.shape == (2, 18, 24)
    assert torch.equal(source.sum(1), torch.ones(2, 24))  # every original token in exactly one group
    y, _ = merge_wavg(plan, x)
    plan2 = bipartite_soft_matching(y, r=5, protected=1)
    source2 = merge_source(plan2, source)
    assert torch.equal(source2.sum(1), torch.ones(2, 24)) and source2.shape[1] == 13


def test_matching_is_deterministic_and_batched_per_sample():
    x = _tokens(batch=3, n=64)
    a = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, 20, torch.Generator().manual_seed(3))
    b = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, 20, torch.Generator().manual_seed(3))
    assert torch.equal(a.merge(x), b.merge(x))
    single = bipartite_soft_matching_random2d(x[1:2], 8, 8, 2, 2, 20, torch.Generator().manual_seed(3))
    assert torch.equal(single.merge(x[1:2]), a.merge(x)[1:2])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype):
    x = _tokens(n=64, dtype=dtype)
    plan = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, 30)
    y = plan.unmerge(plan.merge(x))
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y[_untouched(plan)], x[_untouched(plan)])


def test_merge_and_unmerge_carry_gradients():
    x = _tokens(n=64).requires_grad_()
    plan = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, 24)
    plan.unmerge(plan.merge(x) * 2).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.all(x.grad[_untouched(plan)] == 2)  # untouched tokens: d(2x)/dx exactly


def test_r_zero_is_a_no_op_returning_the_input():
    x = _tokens(n=64)
    plan = bipartite_soft_matching_random2d(x, 8, 8, 2, 2, 0)
    merge, unmerge = plan
    assert merge(x) is x and unmerge(x) is x


def test_block_merge_is_the_mean_that_excludes_padding():
    x = _tokens(batch=2, n=10, c=4)
    mask = torch.ones(2, 10)
    mask[1, :3] = 0  # left padding in the second sample
    merged, weight = block_merge(x, 4, mask)
    assert merged.shape == (2, 3, 4) and weight.tolist() == [[4, 4, 2], [1, 4, 2]]
    torch.testing.assert_close(merged[0, 2], x[0, 8:10].mean(0))
    torch.testing.assert_close(merged[1, 0], x[1, 3])
    assert torch.equal(block_merge(x, 1)[0], x)


def test_block_merge_rejects_bad_k():
    with pytest.raises(ValueError, match="k must be >= 1"):
        block_merge(_tokens(), 0)


@pytest.mark.parametrize("h,w", [(8, 8), (7, 5)])
def test_local_matching_merges_each_candidate_into_its_own_cell_only(h, w):
    x = _tokens(n=h * w)
    plan = bipartite_soft_matching_random2d(x, w, h, 2, 2, 1000, torch.Generator().manual_seed(2), local=True)
    cells = (h // 2) * (w // 2)
    assert plan.r == 3 * cells  # every candidate inside a whole cell, none of the leftovers
    src_pos, dst_pos = plan.src_idx[plan.merged], plan.dst_idx[plan.target]
    assert torch.equal(src_pos // w // 2, dst_pos // w // 2) and torch.equal(src_pos % w // 2, dst_pos % w // 2)
    assert bool((src_pos // w < (h // 2) * 2).all() and (src_pos % w < (w // 2) * 2).all())


def test_local_matching_picks_the_most_similar_candidates():
    x = _tokens(batch=1, n=16, c=4)
    keep, src, dst = random2d_partition(4, 4, 2, 2, None)  # destinations 0, 2, 8, 10
    x[0, 1] = x[0, 0]  # candidate 1 duplicates its cell's destination 0
    plan = bipartite_soft_matching_random2d(x, 4, 4, 2, 2, 1, None, local=True)
    assert plan.src_idx[plan.merged].tolist() == [[1]] and plan.dst_idx[plan.target].tolist() == [[0]]


@pytest.mark.parametrize("h,w,sy,sx", [(8, 8, 2, 2), (7, 5, 2, 2), (9, 6, 3, 2), (1, 1, 2, 2), (4, 4, 1, 1)])
def test_partition_without_choice_takes_each_cells_first_token_and_every_other_token_as_a_candidate(h, w, sy, sx):
    keep, src, dst = random2d_partition(h, w, sy, sx)
    assert keep.numel() == 0
    assert dst.tolist() == [cy * sy * w + cx * sx for cy in range(h // sy) for cx in range(w // sx)]
    assert src.tolist() == sorted(set(range(h * w)) - set(dst.tolist()))


def test_cells_matching_with_every_candidate_merged_leaves_the_destination_grid():
    # SAM's use: r = all candidates, so the merged sequence is one row per cell, in the cells' order,
    # each the mean of its destination and the candidates that joined it
    x = _tokens(batch=2, n=6 * 4, c=5)
    plan = bipartite_soft_matching_random2d(x, 4, 6, 2, 3, r=1000)  # no choice: first tokens, as SAM
    merged = plan.merge(x)  # (B, 2 * 2, C)
    assert plan.r == 24 - 4 and merged.shape == (2, 4, 5)
    for b in range(2):
        for cell, position in enumerate(plan.dst_idx.tolist()):
            members = [position] + [int(plan.src_idx[s]) for s, t in zip(plan.merged[b], plan.target[b]) if t == cell]
            torch.testing.assert_close(merged[b, cell], x[b, members].mean(0))  # float summation order
    assert torch.equal(plan.rows, plan.rows.clamp(0, 3))  # every token lands in one of the 4 rows


def test_plan_rows_send_every_token_to_its_place_in_the_merged_layout():
    # [keep, unmerged candidates, destinations]; merged candidates go to their destination's row
    x = _tokens(batch=2, n=11)
    plan = bipartite_soft_matching(x, r=3, protected=1)
    k, n_unm = 1, plan.unm.shape[1]
    for b in range(2):
        expected = [0] * 11
        for i, position in enumerate(plan.dst_idx.tolist()):
            expected[position] = k + n_unm + i
        for i, candidate in enumerate(plan.unm[b].tolist()):
            expected[int(plan.src_idx[candidate])] = k + i
        for candidate, target in zip(plan.merged[b].tolist(), plan.target[b].tolist()):
            expected[int(plan.src_idx[candidate])] = k + n_unm + target
        assert plan.rows[b].tolist() == expected


@pytest.mark.parametrize("tokens, protected", [(1, 0), (3, 2), (3, 3)])
def test_a_sequence_without_destinations_gives_a_plan_that_merges_nothing(tokens, protected):
    x = _tokens(n=tokens)
    plan = bipartite_soft_matching(x, r=2, protected=protected)
    assert plan.r == 0 and plan.num_merged_tokens == tokens
    assert torch.equal(plan.merge(x), x) and torch.equal(plan.unmerge(x), x)
