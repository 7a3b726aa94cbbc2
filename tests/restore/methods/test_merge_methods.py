"""PruMerge+, ToMe, DART and SparseVLM on small seeded tensors: budgets, merges and hand-checkable answers."""

from __future__ import annotations

import math

import pytest
import torch

from restore.methods import get_method
from restore.methods.pool import _cells
from restore.methods.prumerge import absorb_into_kept, iqr_outliers
from restore.methods.sparsevlm import density_peak_clusters, rater_scores
from restore.tokens import Assignment, ImageTokens
from tests.helpers.tokens import check_indices, make_tokens, run_reduce, run_select

NEW = ["prumerge_plus", "tome", "dart", "sparsevlm"]
MERGERS = ["prumerge_plus", "tome", "sparsevlm"]


def check_means(a: Assignment, features: torch.Tensor) -> None:
    """Each slot is the mean of its members, weighted by the assignment's merge weights when it has them."""
    merged = a.merge(features)
    w = torch.ones(a.num_tokens) if a.weights is None else a.weights
    for s in range(a.num_slots):
        members = a.members(s)
        assert int(a.rep[s]) in members.tolist()
        expected = (w[members, None] * features[members]).sum(0) / w[members].sum()
        assert torch.allclose(merged[s], expected, atol=1e-5)


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
        if name == "sparsevlm":  # c recycled slots hold the best-rated 30% of the deleted tokens, the rest drop
            c = round(0.1 * n)
            recycled = min(num - n + c, max(c, math.ceil(0.3 * (num - n + c)))) if c else 0
            assert int(sizes.sum()) == n - c + recycled
        else:
            assert bool((a.slot >= 0).all()) and int(sizes.sum()) == num
        check_means(a, tokens.features)
    assert run_reduce(name, tokens, num).num_slots == num


def test_merging_is_deterministic_in_low_precision():
    tokens = make_tokens((1, 6, 8))
    half = ImageTokens(features=tokens.features.bfloat16(), importance=tokens.importance.half(), grid=tokens.grid,
                       layer_keys=tokens.layer_keys.bfloat16(), text_attention=tokens.text_attention.half())
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


def test_dart_pivots_by_key_norm_keep_the_tokens_least_similar_to_them():
    e = torch.eye(8)
    features = torch.stack([
        e[0],  # 0: pivot by key norm
        e[0] + 0.1 * e[5],  # 1: near-duplicate of pivot 0 (cos 0.995)
        e[1],  # 2: pivot by key norm
        e[1] + 0.1 * e[6],  # 3: near-duplicate of pivot 2 (cos 0.995)
        e[2],  # 4: distinct (cos 0)
        e[3] + 0.2 * e[0],  # 5: slightly similar to pivot 0 (cos 0.196)
        e[4] + 0.5 * e[1],  # 6: more similar to pivot 2 (cos 0.447)
        e[0] + e[1],  # 7: the largest hidden-state norm; cos 0.707 to both pivots
    ])
    # Key norms 5 and 4 make 0 and 2 the pivots; the largest hidden-state norms (7, 6) must not.
    layer_keys = torch.randn(8, 6, generator=torch.Generator().manual_seed(0))
    layer_keys = layer_keys / layer_keys.norm(dim=1, keepdim=True) * torch.tensor([5.0, 1, 4, 1, 1, 1, 1, 1])[:, None]
    tokens = ImageTokens(features=features, layer_keys=layer_keys)
    expect = {1: [0], 2: [0, 2], 3: [0, 2, 4], 4: [0, 2, 4, 5], 5: [0, 2, 4, 5, 6], 6: [0, 2, 4, 5, 6, 7],
              7: [0, 1, 2, 4, 5, 6, 7]}  # 1 and 3 tie at 0.995: the lower index first
    for k, kept in expect.items():
        assert run_select("dart", tokens, k, pivots=2).tolist() == kept
    # One pivot (token 0): the tokens orthogonal to it (2, 3, 4, 6) go first, ties to the lower index.
    assert run_select("dart", tokens, 3, pivots=1).tolist() == [0, 2, 3]
    # The key norm decides, not the order: swapping the norms of 0 and 7 makes 7 a pivot.
    swapped = ImageTokens(features=features, layer_keys=layer_keys[torch.tensor([7, 1, 2, 3, 4, 5, 6, 0])])
    assert run_select("dart", swapped, 2, pivots=2).tolist() == [2, 7]


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


def test_sparsevlm_raters_are_the_text_tokens_that_look_at_the_image():
    # Four text tokens after the image, six visual tokens. Mean attention on the image R = (0.01, 0.083, 0.097,
    # 0.02), mean 0.0525: tokens 1 and 2 are the raters. Token 3 (the last prompt token, FastV's rater) looks
    # at visual token 4 only, but it is no rater.
    text = torch.tensor([
        [0.01, 0.01, 0.01, 0.01, 0.01, 0.01],
        [0.40, 0.02, 0.02, 0.02, 0.02, 0.02],
        [0.02, 0.02, 0.02, 0.30, 0.02, 0.20],
        [0.00, 0.00, 0.00, 0.00, 0.12, 0.00],
    ])
    raters, scores = rater_scores(text)
    assert raters.tolist() == [False, True, True, False]
    assert torch.allclose(scores, torch.tensor([0.21, 0.02, 0.02, 0.16, 0.02, 0.11]))
    tokens = ImageTokens(features=torch.randn(6, 4), text_attention=text)
    assert run_select("sparsevlm", tokens, 1).tolist() == [0]
    assert run_select("sparsevlm", tokens, 3).tolist() == [0, 3, 5]
    assert run_select("sparsevlm", tokens, 4).tolist() == [0, 1, 3, 5]  # 1, 2, 4 tie: the lower index
    # No text after the image: every token alike, the earliest kept.
    alone = ImageTokens(features=torch.randn(6, 4), text_attention=torch.empty(0, 6))
    assert run_select("sparsevlm", alone, 2).tolist() == [0, 1]


def test_sparsevlm_recycles_the_best_deleted_tokens_into_density_peak_clusters():
    # One text token: it is the only rater and its attention is the score.
    scores = torch.tensor([0.50, 0.49, 0.48, 0.47, 0.46, 0.45, 0.10, 0.09, 0.08, 0.07, 1.0, 0.9])
    e = torch.eye(6)
    features = torch.stack([
        e[0] + 0.01 * e[2], e[1] + 0.01 * e[3], e[0], e[1], e[0] - 0.01 * e[2], e[1] - 0.01 * e[3],  # 0-5
        e[4], e[4] + 0.3 * e[5], e[5], e[5] + 0.3 * e[4],  # 6-9: the worst rated, dropped
        e[2], e[3],  # 10, 11: kept
    ])
    tokens = ImageTokens(features=features, text_attention=scores[None])
    # n = 4, recycle_ratio 0.5: c = 2 recycled slots + the top 2 (10, 11). Of the 10 deleted, the best-rated
    # ceil(0.6 * 10) = 6 (tokens 0-5) are recycled: two tight groups, {0, 2, 4} around e0 and {1, 3, 5} around
    # e1, whose middle tokens 2 and 3 are the density peaks; 6-9 are dropped.
    a = run_reduce("sparsevlm", tokens, 4, recycle_ratio=0.5, recycle_share=0.6, knn=2)
    assert a.rep.tolist() == [2, 3, 10, 11]
    assert a.slot.tolist() == [0, 1, 0, 1, 0, 1, -1, -1, -1, -1, 2, 3]
    assert a.sizes().tolist() == [3.0, 3.0, 1.0, 1.0]
    assert torch.allclose(a.merge(features)[:2], torch.stack([e[0], e[1]]), atol=1e-6)
    check_means(a, features)
    # The centres are density peaks, not the best-rated recycled tokens (0 and 1).
    centres, owner = density_peak_clusters(features[:6], 2, knn=2)
    assert centres.tolist() == [2, 3] and owner.tolist() == [0, 1, 0, 1, 0, 1]
    # recycle_ratio 0 is plain top-n pruning.
    plain = run_reduce("sparsevlm", tokens, 4, recycle_ratio=0.0)
    assert plain.rep.tolist() == [0, 1, 10, 11] and int(plain.sizes().sum()) == 4


def test_prumerge_merges_clusters_by_key_similarity_weighted_by_attention():
    # Kept 0 and 3; by key, 1 and 2 lie near 0, 4 and 5 near 3 (features deliberately elsewhere).
    keys = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0], [0.2, 0.9], [0.1, 0.7]])
    features = torch.tensor([[0.0], [10.0], [20.0], [30.0], [40.0], [50.0]])
    attention = torch.tensor([0.4, 0.1, 0.3, 0.1, 0.05, 0.05])
    a = absorb_into_kept(keys, torch.tensor([0, 3]), attention)
    assert a.slot.tolist() == [0, 0, 0, 1, 1, 1] and a.sizes().tolist() == [3.0, 3.0]
    # (0.4*0 + 0.1*10 + 0.3*20) / 0.8 and (0.1*30 + 0.05*40 + 0.05*50) / 0.2; plain means would be 10 and 40.
    assert torch.allclose(a.merge(features).flatten(), torch.tensor([8.75, 37.5]))
    # Tokens that already stand for several (sizes) weigh size x attention.
    sizes = torch.tensor([1.0, 3.0, 1.0, 1.0, 1.0, 1.0])
    assert torch.allclose(a.merge(features, sizes)[0], torch.tensor([(0.3 * 10 + 0.3 * 20) / 1.0]))
    # Through the method: the same weights reach the reduce of an image.
    tokens = ImageTokens(features=features.repeat(1, 2), importance=attention, keys=keys, grid=(1, 2, 3))
    b = run_reduce("prumerge_plus", tokens, 2)
    assert torch.equal(b.weights, attention)
    check_means(b, tokens.features)


def test_in_llm_attributes_and_options():
    dart, sparse = get_method("dart"), get_method("sparsevlm")
    assert (dart.stage, dart.default_layer, dart.author_positions, dart.needs_importance, dart.needs_layer_keys,
            dart.needs_text_attention) == ("llm", 2, "original", False, True, False)
    assert (sparse.stage, sparse.author_positions, sparse.needs_importance, sparse.needs_layer_keys,
            sparse.needs_text_attention) == ("llm", "original", False, False, True)
    assert sparse.layers(None, sparse.validate_options({})) == [2, 6, 15]
    with pytest.raises(ValueError, match="options.layers"):
        sparse.layers(3, sparse.validate_options({}))
    for bad in ({"layers": [6, 2]}, {"recycle_share": 0.0}, {"knn": 0}):
        with pytest.raises(ValueError, match="invalid options"):
            sparse.validate_options(bad)
    assert get_method("prumerge_plus").stage == "pre" and get_method("tome").stage == "pre"
    assert get_method("prumerge_plus").needs_importance and not get_method("tome").needs_importance
    with pytest.raises(ValueError, match="invalid options"):
        dart.validate_options({"pivots": 0})
    with pytest.raises(ValueError, match="invalid options"):
        sparse.validate_options({"recycle_ratio": 1.5})
    with pytest.raises(ValueError, match="invalid options"):
        get_method("tome").validate_options({"r": 4})


@pytest.mark.parametrize("name,match", [("prumerge_plus", "attention scores"), ("sparsevlm", "text_attention"),
                                        ("dart", "layer_keys")])
def test_signals_required(name, match):
    tokens = ImageTokens(features=torch.randn(10, 4))
    with pytest.raises(ValueError, match=match):
        run_select(name, tokens, 3)
    with pytest.raises(ValueError, match=match):
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
