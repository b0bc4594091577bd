"""Properties of the merge core (tomesd.merge) over random shapes, ratios, strides and dtypes (hypothesis).

Exact (torch.equal) where it must hold: r=0 changes nothing; a token left alone by a merge comes back
unchanged; every token of a merged group comes back with the same value. Approximate (per-dtype
tolerance) where arithmetic rounds: a merged group's value is the mean of its tokens.
"""

from __future__ import annotations

import pytest
import torch

from tomesd.merge import bipartite_soft_matching, bipartite_soft_matching_random2d

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
#: How far a group's value may be from the float64 mean of its tokens (features are standard normal).
MEAN_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2, torch.float16: 4e-3}
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None)  # reproducible runs


def features(batch: int, tokens: int, channels: int, dtype: torch.dtype, seed: int, coarse: bool) -> torch.Tensor:
    """(B, N, C) seeded features; ``coarse`` rounds them to -1/0/1, so ties and all-zero tokens occur."""
    x = torch.randn(batch, tokens, channels, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (x.round().clamp(-1, 1) if coarse else x).to(dtype)


def check_plan(plan, x: torch.Tensor, r: int) -> torch.Tensor:
    """The properties every plan has, on features ``x`` (B, N, C) for a requested merge of ``r``; returns
    :attr:`MergePlan.rows` (B, N), the merged row each token goes to."""
    batch, tokens, channels = x.shape
    assert plan.r == r and plan.num_merged_tokens == tokens - r
    merged = plan.merge(x)
    assert merged.shape == (batch, tokens - r, channels) and merged.dtype == x.dtype
    restored = plan.unmerge(merged)
    assert restored.shape == x.shape
    if r == 0:  # exact: a plan that merges nothing is the identity both ways
        assert torch.equal(merged, x) and torch.equal(restored, x)
        return torch.arange(tokens).expand(batch, -1)
    rows = plan.rows
    assert rows.shape == (batch, tokens)
    sizes = plan.merge(torch.ones(batch, tokens, 1, dtype=torch.float64), mode="sum")  # (B, N - r, 1)
    assert (sizes >= 1).all() and (sizes.sum(1) == tokens).all()  # every row holds a token; none is lost
    for b in range(batch):
        assert torch.equal(torch.unique(rows[b]), torch.arange(tokens - r))
        for row in range(tokens - r):
            members = (rows[b] == row).nonzero().squeeze(1)
            group = restored[b, members]  # (size, C)
            assert torch.equal(group, group[:1].expand_as(group))  # the group shares one value exactly
            if members.numel() == 1:  # a token merged with nothing keeps its value exactly
                assert torch.equal(group[0], x[b, members[0]])
            else:
                mean = x[b, members].double().mean(0)
                assert torch.allclose(group[0].double(), mean, atol=MEAN_TOLERANCE[x.dtype], rtol=0)
    return rows


@st.composite
def sequences(draw):
    """A ViT-like sequence with at least one destination after the protected tokens."""
    tokens = draw(st.integers(2, 40))
    protected = draw(st.integers(0, tokens - 2))
    return dict(batch=draw(st.integers(1, 3)), tokens=tokens, protected=protected, channels=draw(st.integers(1, 6)),
                r=draw(st.integers(-3, tokens + 3)), dtype=draw(st.sampled_from(DTYPES)),
                seed=draw(st.integers(0, 2**31)), coarse=draw(st.booleans()))


@PROPERTY
@given(sequences())
def test_sequence_matching_merges_the_documented_count_and_unmerges_consistently(case):
    x = features(case["batch"], case["tokens"], case["channels"], case["dtype"], case["seed"], case["coarse"])
    plan = bipartite_soft_matching(x, case["r"], protected=case["protected"])
    candidates = (case["tokens"] - case["protected"] + 1) // 2
    rows = check_plan(plan, x, min(max(case["r"], 0), candidates))  # r is clamped to the candidates
    protected = torch.arange(case["protected"])
    assert torch.equal(rows[:, protected], protected.expand(case["batch"], -1))  # protected tokens first, alone


def _grid_case(draw, w: int, h: int, sx: int, sy: int) -> dict:
    return dict(batch=draw(st.integers(1, 3)), w=w, h=h, sx=sx, sy=sy, channels=draw(st.integers(1, 6)),
                r=draw(st.integers(-3, w * h + 3)), local=draw(st.booleans()), dtype=draw(st.sampled_from(DTYPES)),
                seed=draw(st.integers(0, 2**31)), coarse=draw(st.booleans()))


@st.composite
def grids(draw):
    """A token grid that holds at least one sy x sx cell, and its destination strides."""
    sx, sy = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    return _grid_case(draw, draw(st.integers(sx, 12)), draw(st.integers(sy, 12)), sx, sy)


@st.composite
def small_grids(draw):
    """A token grid narrower or shorter than one sy x sx cell (or both)."""
    sx, sy = draw(st.integers(1, 4)), draw(st.integers(2, 4))
    if draw(st.booleans()):
        sx, sy = sy, sx
    short = sy > 1 and (sx == 1 or draw(st.booleans()))
    h = draw(st.integers(1, sy - 1)) if short else draw(st.integers(1, 12))
    w = draw(st.integers(1, sx - 1)) if sx > 1 and (not short or draw(st.booleans())) else draw(st.integers(1, 12))
    return _grid_case(draw, w, h, sx, sy)


def grid_plan(case: dict):
    """Features for a drawn grid case and the plan the grid matching makes of them."""
    w, h = case["w"], case["h"]
    x = features(case["batch"], w * h, case["channels"], case["dtype"], case["seed"], case["coarse"])
    return x, bipartite_soft_matching_random2d(x, w, h, case["sx"], case["sy"], case["r"], local=case["local"])


def _cells(positions: torch.Tensor, w: int, sx: int, sy: int) -> torch.Tensor:
    return (positions // w // sy) * (w // sx) + (positions % w) // sx


@PROPERTY
@given(grids())
def test_grid_matching_merges_the_documented_count_and_stays_in_cells_when_local(case):
    w, h, sx, sy = case["w"], case["h"], case["sx"], case["sy"]
    x, plan = grid_plan(case)
    cells = (h // sy) * (w // sx)
    # every token but one destination per cell is a candidate; local matching only those inside whole cells
    candidates = cells * (sx * sy - 1) if case["local"] else w * h - cells
    rows = check_plan(plan, x, min(max(case["r"], 0), candidates))
    if case["local"] and plan.r:
        positions = torch.arange(w * h)
        inside = (positions // w < (h // sy) * sy) & (positions % w < (w // sx) * sx)
        for b in range(case["batch"]):
            for row in rows[b].unique():
                members = positions[rows[b] == row]
                if members.numel() > 1:  # a merged group lies inside one whole cell
                    assert inside[members].all() and _cells(members, w, sx, sy).unique().numel() == 1


@PROPERTY
@given(small_grids())
def test_a_grid_smaller_than_one_cell_gives_a_plan_that_merges_nothing(case):
    x, plan = grid_plan(case)
    check_plan(plan, x, 0)


@PROPERTY
@given(st.integers(1, 6), st.integers(-2, 4), st.integers(1, 3))
def test_a_sequence_without_destinations_gives_a_plan_that_merges_nothing(tokens, r, batch):
    x = features(batch, tokens, 4, torch.float32, 0, False)
    for protected in (tokens - 1, tokens):
        check_plan(bipartite_soft_matching(x, r, protected=protected), x, 0)
