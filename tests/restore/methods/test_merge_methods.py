"""PruMerge+, ToMe, DART and SparseVLM on small seeded tensors: budgets, merges and hand-checkable answers."""

from __future__ import annotations

import pytest
import torch

from restore.methods import get_method
from restore.methods.pool import _cells
from restore.methods.prumerge import iqr_outliers
from restore.tokens import Assignment, ImageTokens
from tests.helpers.tokens import check_indices, make_tokens, run_reduce, run_select

NEW = ["prumerge_plus", "tome", "dart", "sparsevlm"]
MERGERS = ["prumerge_plus", "tome", "sparsevlm"]


def check_means(a: Assignment, features: torch.Tensor) -> None:
    merged = a.merge(features)
    for s in range(a.num_slots):
        members = a.members(s)
        assert int(a.rep[s]) in members.tolist()
        assert torch.allclose(merged[s], features[members].mean(0), atol=1e-5)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("grid,no_grid,keys", [((1, 6, 8), False, False), ((2, 5, 7), False, True),
                                               ((1, 1, 30), True, False)])
def test_select_exact_budget_sorted_unique_deterministic(name, grid, no_grid, keys):
    tokens = make_tokens(grid, no_grid=no_grid, keys=keys)
    num = tokens.num_tokens
    for k in sorted({1, 2, 3, 7, 9, num // 3, num // 2, num - 1, num, num + 5}):
        first = run_select(name, tokens, k)
        check_indices(first, min(k, num), num)
        assert torch.equal(first, run_select(name, tokens, k))
        if k >= num:
            assert torch.equal(first, torch.arange(num))


@pytest.mark.parametrize("name", MERGERS)
@pytest.mark.parametrize("keys", [False, True])
def test_reduce_merges_everything_into_exactly_n_slots(name, keys):
    tokens = make_tokens((1, 8, 8), dim=8, keys=keys)
    num = tokens.num_tokens
    for n in [1, 2, 6, 10, 17, 32, 63]:
        a = run_reduce(name, tokens, n)
        again = run_reduce(name, tokens, n)
        assert torch.equal(a.slot, again.slot) and torch.equal(a.rep, again.rep)
        assert a.num_slots == n and a.num_tokens == num
        assert torch.equal(a.rep, torch.sort(a.rep).values)
        assert torch.equal(a.slot[a.rep], torch.arange(n))
        sizes = a.sizes()
        assert bool((sizes >= 1).all())
        if name == "sparsevlm" and round(0.1 * n) == 0:  # no recycled token at tiny budgets: pure pruning
            assert int(sizes.sum()) == n
        else:
            assert bool((a.slot >= 0).all()) and int(sizes.sum()) == num
        check_means(a, tokens.features)
    assert run_reduce(name, tokens, num).num_slots == num


def test_merging_is_deterministic_in_low_precision():
    tokens = make_tokens((1, 6, 8))
    half = ImageTokens(features=tokens.features.bfloat16(), importance=tokens.importance.half(), grid=tokens.grid)
    for name in NEW:
        check_indices(run_select(name, half, 9), 9, tokens.num_tokens)
    for name in MERGERS:
        assert run_reduce(name, half, 9).num_slots == 9


def test_tome_merges_the_most_similar_pair_first():
    # Orthogonal tokens except 4 (set A: even position) and 5 (set B), nearly equal, and the looser 2 ~ 7.
    num = 10
    features = torch.eye(num)
    features[5] = features[4] + 0.05 * features[9]
    features[7] = features[2] + 0.5 * features[8]
    tokens = ImageTokens(features=features)
    a = run_reduce("tome", tokens, num - 1)
    assert int(a.slot[4]) == int(a.slot[5])
    assert int(a.sizes()[a.slot[5]]) == 2 and int(a.sizes().sum()) == num
    assert 5 in a.rep.tolist() and 4 not in a.rep.tolist()  # the A token folds into its B token
    assert torch.equal(run_select("tome", tokens, num - 1), torch.tensor([0, 1, 2, 3, 5, 6, 7, 8, 9]))
    # The next most similar pair goes second.
    b = run_reduce("tome", tokens, num - 2)
    assert int(b.slot[2]) == int(b.slot[7]) and int(b.slot[4]) == int(b.slot[5])
    assert sorted(b.sizes().tolist()) == [1.0] * 6 + [2.0, 2.0]
    check_means(b, features)


def test_tome_tracks_sizes_over_rounds():
    # Two tight clusters in alternating blocks: merging down to 2 must give the two clusters, sizes 4 and 4.
    gen = torch.Generator().manual_seed(0)
    base = torch.zeros(8, 6)
    base[:4, 0] = 1.0
    base[4:, 1] = 1.0
    features = base + 0.01 * torch.randn(8, 6, generator=gen)
    tokens = ImageTokens(features=features)
    a = run_reduce("tome", tokens, 2)
    assert torch.equal(a.slot, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    assert a.sizes().tolist() == [4.0, 4.0]
    # Round 1 folds 0,2,4,6 into B tokens; round 2 folds 1 into 3 and 5 into 7.
    assert torch.equal(a.rep, torch.tensor([3, 7]))
    assert torch.equal(run_select("tome", tokens, 2), torch.tensor([3, 7]))
    check_means(a, features)
    # Keys, when given, decide the grouping instead of the features.
    keys = base[torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])] + 0.01 * torch.randn(8, 6, generator=gen)
    by_keys = run_reduce("tome", ImageTokens(features=features, keys=keys), 2)
    assert torch.equal(by_keys.slot, torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))


def test_dart_keeps_the_tokens_least_similar_to_the_pivots():
    e = torch.eye(8)
    features = torch.stack([
        10.0 * e[0],  # 0: pivot (largest norm)
        9.0 * e[1],  # 1: pivot
        e[0] + 0.1 * e[5],  # 2: near-duplicate of pivot 0
        e[1] + 0.1 * e[6],  # 3: near-duplicate of pivot 1
        e[0] + e[1],  # 4: duplicates both a bit
        e[2],  # 5: distinct
        e[3] + 0.2 * e[0],  # 6: slightly similar to pivot 0
        e[4] + 0.5 * e[1],  # 7: more similar to pivot 1
    ])
    tokens = ImageTokens(features=features)
    assert torch.equal(run_select("dart", tokens, 1, pivots=2), torch.tensor([0]))
    assert torch.equal(run_select("dart", tokens, 2, pivots=2), torch.tensor([0, 1]))
    assert torch.equal(run_select("dart", tokens, 3, pivots=2), torch.tensor([0, 1, 5]))
    assert torch.equal(run_select("dart", tokens, 4, pivots=2), torch.tensor([0, 1, 5, 6]))
    assert torch.equal(run_select("dart", tokens, 5, pivots=2), torch.tensor([0, 1, 5, 6, 7]))
    assert torch.equal(run_select("dart", tokens, 6, pivots=2), torch.tensor([0, 1, 4, 5, 6, 7]))
    # One pivot: token 1 is now an ordinary, orthogonal token and is kept early.
    assert torch.equal(run_select("dart", tokens, 3, pivots=1), torch.tensor([0, 1, 3]))
    # Default 8 pivots cover every token at k <= 8: the top-norm tokens.
    assert torch.equal(run_select("dart", tokens, 2), torch.tensor([0, 1]))


def test_prumerge_keeps_the_iqr_outliers_then_uniform_fill():
    tokens = make_tokens((1, 6, 8))
    num = tokens.num_tokens
    gen = torch.Generator().manual_seed(5)
    importance = 0.01 + 0.001 * torch.rand(num, generator=gen)
    hot = torch.tensor([5, 20, 33])
    importance[hot] = torch.tensor([0.3, 0.2, 0.1])
    tokens = ImageTokens(features=tokens.features, importance=importance, grid=tokens.grid)
    assert torch.equal(torch.nonzero(iqr_outliers(importance, 1.5)).flatten(), hot)
    assert torch.equal(run_select("prumerge_plus", tokens, 3), hot)
    assert torch.equal(run_select("prumerge_plus", tokens, 2), torch.tensor([5, 20]))  # more outliers than budget
    pool = get_method("pool")
    for k in [4, 8, 12, 24]:
        idx = run_select("prumerge_plus", tokens, k)
        check_indices(idx, k, num)
        assert set(hot.tolist()) <= set(idx.tolist())
        # The fill is made of cell-centre tokens of the k-cell grid cut: spatially uniform samples.
        fill = set(idx.tolist()) - set(hot.tolist())
        assert fill <= set(pool.select(tokens, k, None).tolist())
    # Fill samples spread over the image: at k = 12 every quadrant of the 6x8 grid holds one.
    rows, cols = torch.div(run_select("prumerge_plus", tokens, 12), 8, rounding_mode="floor"), run_select(
        "prumerge_plus", tokens, 12) % 8
    quadrant = (rows >= 3).long() * 2 + (cols >= 4).long()
    assert set(quadrant.tolist()) == {0, 1, 2, 3}
    # reduce: the same kept tokens, every pruned token in the slot of its most similar kept token.
    a = run_reduce("prumerge_plus", tokens, 8)
    assert torch.equal(a.rep, run_select("prumerge_plus", tokens, 8))
    x = torch.nn.functional.normalize(tokens.features, dim=-1)
    expected = (x @ x[a.rep].T).argmax(dim=1)
    expected[a.rep] = torch.arange(8)
    assert torch.equal(a.slot, expected)


def test_sparsevlm_keeps_top_scores_and_recycles_deleted_tokens_by_group():
    num = 20
    gen = torch.Generator().manual_seed(2)
    # Deleted tokens come in two directions (even / odd index); the kept ones are random.
    features = torch.randn(num, 6, generator=gen)
    directions = torch.eye(6)[:2]
    importance = torch.linspace(0.01, 0.02, num)
    top = torch.tensor([1, 4, 7, 10, 13, 16, 18, 19])
    importance[top] = 1.0 + torch.arange(8.0)
    deleted = torch.tensor(sorted(set(range(num)) - set(top.tolist())))
    features[deleted] = directions[deleted % 2] + 0.01 * torch.randn(deleted.numel(), 6, generator=gen)
    tokens = ImageTokens(features=features, importance=importance)
    assert torch.equal(run_select("sparsevlm", tokens, 8), top)
    assert torch.equal(run_select("sparsevlm", tokens, 2), torch.tensor([18, 19]))
    # n = 10, recycle_ratio 0.2: 8 top-score tokens + 2 recycled groups centred on the two best-rated
    # deleted tokens (importance rises with the index among the deleted: 17, then 15).
    a = run_reduce("sparsevlm", tokens, 10, recycle_ratio=0.2)
    assert a.num_slots == 10 and int(a.sizes().sum()) == num
    kept_slots = a.slot[top]
    assert bool((a.sizes()[kept_slots] == 1).all())
    recycled = sorted(set(range(10)) - set(kept_slots.tolist()))
    centres = a.rep[recycled]
    assert torch.equal(centres, torch.tensor([15, 17]))  # the best-rated deleted tokens
    for s in recycled:
        assert set(a.members(s).tolist()) <= set(deleted.tolist())
    assert int(a.sizes()[recycled].sum()) == deleted.numel()
    check_means(a, features)
    # With centres of both parities, each recycled group gathers exactly one direction.
    importance2 = importance.clone()
    importance2[14] = 0.5  # deleted, even, now the best-rated deleted token
    tokens2 = ImageTokens(features=features, importance=importance2)
    b = run_reduce("sparsevlm", tokens2, 10, recycle_ratio=0.2)
    rec2 = sorted(set(range(10)) - set(b.slot[top].tolist()))
    assert torch.equal(b.rep[rec2], torch.tensor([14, 17]))
    for s in rec2:
        assert len({i % 2 for i in b.members(s).tolist()}) == 1
    assert sorted(b.sizes()[rec2].tolist()) == [6.0, 6.0]
    check_means(b, features)
    # recycle_ratio 0 is plain top-k pruning.
    plain = run_reduce("sparsevlm", tokens, 8, recycle_ratio=0.0)
    assert torch.equal(plain.rep, top) and int(plain.sizes().sum()) == 8


def test_in_llm_attributes_and_options():
    dart, sparse = get_method("dart"), get_method("sparsevlm")
    assert (dart.stage, dart.default_layer, dart.author_positions, dart.needs_importance) == (
        "llm", 2, "original", False)
    assert (sparse.stage, sparse.default_layer, sparse.author_positions, sparse.needs_importance) == (
        "llm", 2, "original", True)
    assert get_method("prumerge_plus").stage == "pre" and get_method("tome").stage == "pre"
    assert get_method("prumerge_plus").needs_importance and not get_method("tome").needs_importance
    with pytest.raises(ValueError, match="invalid options"):
        dart.validate_options({"pivots": 0})
    with pytest.raises(ValueError, match="invalid options"):
        sparse.validate_options({"recycle_ratio": 1.5})
    with pytest.raises(ValueError, match="invalid options"):
        get_method("tome").validate_options({"r": 4})


@pytest.mark.parametrize("name", ["prumerge_plus", "sparsevlm"])
def test_importance_required(name):
    tokens = ImageTokens(features=torch.randn(10, 4))
    with pytest.raises(ValueError, match="attention scores"):
        run_select(name, tokens, 3)
    with pytest.raises(ValueError, match="attention scores"):
        run_reduce(name, tokens, 3)


@pytest.mark.parametrize("grid,budgets", [((1, 2, 30), (31, 32, 33)), ((4, 3, 9), (73, 74, 75)), ((1, 24, 24), (575,))])
def test_pool_cut_and_prumerge_fill_on_narrow_grids(grid, budgets):
    # Budgets that once asked a band for more cells than it has columns.
    tokens = make_tokens(grid)
    n_tokens = tokens.num_tokens
    for k in budgets:
        assert torch.bincount(_cells(tokens, k), minlength=k).min() >= 1
        assert run_reduce("pool", tokens, k).num_slots == k
    flat = ImageTokens(features=tokens.features, importance=torch.ones(n_tokens), grid=tokens.grid)  # no outliers
    for k in budgets:
        check_indices(run_select("prumerge_plus", tokens, k), k, n_tokens)
        check_indices(run_select("prumerge_plus", flat, k), k, n_tokens)
        assert run_reduce("prumerge_plus", tokens, k).num_slots == k
