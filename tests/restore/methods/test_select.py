"""Base VTR methods on small seeded tensors: exact budgets, determinism, and hand-checkable answers."""

from __future__ import annotations

import pytest
import torch

from restore.methods import get_method
from restore.methods.cdpruner import dpp_greedy, instruction_relevance
from restore.methods.holov import allocate, crop_ids
from restore.methods.pool import _cells
from restore.methods.prunesid import group_nms, principal_groups
from restore.tokens import Assignment, ImageTokens
from tests.helpers.tokens import check_indices, make_tokens, run_select

SELECTORS = ["visionzip", "divprune", "vispruner", "holov", "fastv", "random", "pool", "cdpruner", "prunesid"]


@pytest.mark.parametrize("name", SELECTORS)
@pytest.mark.parametrize("grid,no_grid,keys", [((1, 6, 8), False, False), ((2, 5, 7), False, True),
                                               ((1, 1, 30), True, False)])
def test_select_exact_budget_sorted_unique_deterministic(name, grid, no_grid, keys):
    tokens = make_tokens(grid, no_grid=no_grid, keys=keys)
    num = tokens.num_tokens
    for k in sorted({1, 2, 3, 7, num // 3, num // 2, num - 1, num}):
        first = run_select(name, tokens, k)
        check_indices(first, k, num)
        assert torch.equal(first, run_select(name, tokens, k))
        if k == num:
            assert torch.equal(first, torch.arange(num))


@pytest.mark.parametrize("name", ["visionzip", "fastv"])
def test_attention_methods_keep_top_importance(name):
    tokens = make_tokens((1, 6, 8))
    hot = torch.tensor([3, 10, 11, 29, 40])
    importance = torch.full((tokens.num_tokens,), 0.01)
    importance[hot] = torch.tensor([0.5, 0.4, 0.3, 0.2, 0.1])
    tokens = ImageTokens(features=tokens.features, importance=importance, grid=tokens.grid)
    assert torch.equal(run_select(name, tokens, 5), hot)
    assert torch.equal(run_select(name, tokens, 2), torch.tensor([3, 10]))
    # Ties go to the lower index.
    flat = ImageTokens(features=tokens.features, importance=torch.ones(tokens.num_tokens), grid=tokens.grid)
    assert torch.equal(run_select(name, flat, 4), torch.arange(4))


def test_fastv_is_in_llm():
    fastv = get_method("fastv")
    assert (fastv.stage, fastv.default_layer, fastv.author_positions, fastv.needs_importance) == (
        "llm", 2, "original", True)


@pytest.mark.parametrize("name", ["visionzip", "vispruner", "holov", "fastv"])
def test_importance_required(name):
    tokens = ImageTokens(features=torch.randn(10, 4))
    with pytest.raises(ValueError, match="attention scores"):
        run_select(name, tokens, 3)


def test_visionzip_reduce_dominant_plus_contextual_means():
    tokens = make_tokens((1, 24, 24), dim=8, keys=True)
    num = tokens.num_tokens
    method = get_method("visionzip")
    opts = method.validate_options({})
    for n in [1, 2, 10, 64, 192, 575]:
        a = method.reduce(tokens, n, opts)
        assert isinstance(a, Assignment) and a.num_slots == n
        sizes = a.sizes()
        c = min(max(round(n * 10 / 64), 0), n - 1)
        assert bool((sizes >= 1).all())
        if c > 0:  # contextual tokens absorb every leftover: nothing is dropped
            assert int(sizes.sum()) == num and bool((a.slot >= 0).all())
        else:  # tiny budgets have no contextual token: pure pruning
            assert int(sizes.sum()) == n
        dominant = a.rep[: n - c]
        assert torch.equal(dominant, torch.topk(tokens.importance, n - c).indices.sort().values)
        assert bool((sizes[: n - c] == 1).all())
        merged = a.merge(tokens.features)
        assert torch.allclose(merged[: n - c], tokens.features[dominant])
        for s in range(n - c, n):
            members = a.members(s)
            assert int(a.rep[s]) in members.tolist()
            assert torch.allclose(merged[s], tokens.features[members].mean(0), atol=1e-6)
    assert get_method("visionzip").reduce(tokens, num, opts).num_slots == num
    split = method.reduce(tokens, 64, opts)
    assert int((split.sizes() > 1).sum()) <= 10 and int((split.sizes() == 1).sum()) >= 54


def test_visionzip_contextual_groups_follow_similarity():
    # Two clusters among the leftovers: each contextual slot must gather exactly one cluster.
    num = 12
    base = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = base[torch.tensor([0, 1] * 6)] + 0.01 * torch.randn(num, 2, generator=torch.Generator().manual_seed(1))
    importance = torch.zeros(num)
    importance[[0, 1]] = 1.0
    tokens = ImageTokens(features=features, importance=importance)
    method = get_method("visionzip")
    a = method.reduce(tokens, 4, method.validate_options({"contextual_ratio": 0.5}))
    assert torch.equal(a.rep[:2], torch.tensor([0, 1]))
    for s in (2, 3):
        parity = {i % 2 for i in a.members(s).tolist()}
        assert len(parity) == 1
    assert int(a.sizes().sum()) == num


def test_divprune_picks_farthest_apart_points():
    # Unit directions on a circle: 0, 10, 20, 90, 180, 270 degrees. The isolated ones win.
    angles = torch.deg2rad(torch.tensor([0.0, 10.0, 20.0, 90.0, 180.0, 270.0]))
    features = torch.stack([angles.cos(), angles.sin()], dim=1)
    tokens = ImageTokens(features=features)
    # First pick: largest nearest-other distance is 180 (90 degrees to both neighbours), then 0 (opposite).
    assert torch.equal(run_select("divprune", tokens, 2), torch.tensor([0, 4]))
    # Then 90 and 270 (90 degrees from every pick) before the 10/20 near-duplicates; 90 first (lower index).
    assert torch.equal(run_select("divprune", tokens, 3), torch.tensor([0, 3, 4]))
    assert torch.equal(run_select("divprune", tokens, 4), torch.tensor([0, 3, 4, 5]))


def test_divprune_never_repeats_on_duplicates():
    features = torch.ones(20, 4)
    features[7] = torch.tensor([1.0, -1.0, 0.0, 0.0])
    idx = run_select("divprune", ImageTokens(features=features), 5)
    check_indices(idx, 5, 20)
    assert 7 in idx.tolist()


def test_vispruner_drops_duplicates_first():
    gen = torch.Generator().manual_seed(3)
    num = 16
    features = torch.randn(num, 32, generator=gen)
    # Tokens 9, 12 and 14 are exact copies of 2, 5 and 6; importance is low everywhere except 0 and 1.
    features[9], features[12], features[14] = features[2], features[5], features[6]
    importance = torch.full((num,), 0.01)
    importance[[0, 1]] = 1.0
    tokens = ImageTokens(features=features, importance=importance)
    # round(2/13 * 13) = 2 important tokens: 0 and 1.
    idx = run_select("vispruner", tokens, num - 3, important_ratio=2 / 13)
    assert {0, 1} <= set(idx.tolist())
    dropped = set(range(num)) - set(idx.tolist())
    # One of each duplicate pair goes; the distinct tokens all stay.
    assert len(dropped) == 3
    assert all(len(dropped & pair) == 1 for pair in ({2, 9}, {5, 12}, {6, 14}))
    # Same with one-at-a-time rounds.
    slow = run_select("vispruner", tokens, num - 3, important_ratio=2 / 13, drop_fraction=0.01)
    assert set(range(num)) - set(slow.tolist()) == dropped


def test_vispruner_important_part_is_top_attention():
    tokens = make_tokens((1, 6, 8))
    idx = run_select("vispruner", tokens, 10, important_ratio=0.5)
    top5 = torch.topk(tokens.importance, 5).indices
    assert set(top5.tolist()) <= set(idx.tolist())
    only_important = run_select("vispruner", tokens, 10, important_ratio=1.0)
    assert torch.equal(only_important, torch.topk(tokens.importance, 10).indices.sort().values)


def test_holov_crops_and_allocation():
    tokens = make_tokens((2, 4, 6))
    crop = crop_ids(tokens, 2)
    assert torch.equal(torch.bincount(crop), torch.full((8,), 6))
    assert int(crop[0]) == 0 and int(crop[5]) == 1 and int(crop[23]) == 3 and int(crop[24]) == 4
    assert allocate([0.7, 0.1, 0.1, 0.1], [3, 10, 10, 10], 12) == [3, 3, 3, 3]
    assert allocate([1.0, 0.0], [5, 5], 7) == [5, 2]
    assert allocate([0.5, 0.5], [4, 4], 3) == [2, 1]
    for k in range(0, 20):
        out = allocate([0.4, 0.3, 0.2, 0.1], [2, 3, 7, 8], k)
        assert sum(out) == k and all(o <= c for o, c in zip(out, [2, 3, 7, 8]))


def test_holov_gives_the_hot_crop_most_of_the_budget():
    tokens = make_tokens((1, 8, 8))
    crop = crop_ids(tokens, 2)
    # All the attention mass in the bottom-right crop, rising with the index inside it.
    importance = torch.where(crop == 3, 1.0 + 1e-3 * torch.arange(64.0), 0.0)
    importance = importance / importance.sum()
    hot = ImageTokens(features=tokens.features, importance=importance, grid=tokens.grid)
    idx = run_select("holov", hot, 16)
    per_crop = torch.bincount(crop[idx], minlength=4)
    assert int(per_crop[3]) > 8 and int(per_crop.sum()) == 16
    # Attention only: every token goes to the hot crop while it has room.
    attn_only = run_select("holov", hot, 16, variance_weight=0.0)
    assert torch.equal(torch.bincount(crop[attn_only], minlength=4), torch.tensor([0, 0, 0, 16]))
    # Within a crop the highest-attention tokens are the ones kept.
    assert torch.equal(attn_only, torch.nonzero(crop == 3).flatten())
    bigger = run_select("holov", hot, 20, variance_weight=0.0, dissimilarity_weight=0.3)
    assert int(torch.bincount(crop[bigger], minlength=4)[3]) == 16


@pytest.mark.parametrize("grid", [(1, 24, 24), (1, 5, 7)])
def test_random_and_pool_exact_budget(grid):
    tokens = make_tokens(grid, dim=4)
    num = tokens.num_tokens
    budgets = [1, 2, 5, 12, 20, 34, 35] if num == 35 else [1, 7, 64, 144, 192, 575, 576]
    pool = get_method("pool")
    for n in budgets:
        for name in ("random", "pool"):
            check_indices(run_select(name, tokens, n), n, num)
        a = pool.reduce(tokens, n, pool.validate_options({}))
        assert a.num_slots == n
        assert bool((a.slot >= 0).all()) and int(a.sizes().sum()) == num
        assert bool((a.sizes() >= 1).all())
        # pool.select picks exactly one token per cell, and that token is its cell's representative.
        cell = _cells(tokens, n)
        picked = run_select("pool", tokens, n)
        assert torch.equal(torch.sort(cell[picked]).values, torch.arange(n))
        assert torch.equal(a.slot[a.rep], torch.arange(n))


def test_random_depends_on_seed_only():
    tokens = make_tokens((1, 6, 8))
    a = run_select("random", tokens, 10, seed=1)
    assert torch.equal(a, run_select("random", tokens, 10, seed=1))
    assert not torch.equal(a, run_select("random", tokens, 10, seed=2))


@pytest.mark.parametrize("name", ["visionzip", "divprune", "vispruner", "holov", "fastv", "cdpruner", "prunesid"])
def test_low_precision_inputs(name):
    tokens = make_tokens((1, 6, 8))
    half = ImageTokens(features=tokens.features.bfloat16(), importance=tokens.importance.half(), grid=tokens.grid)
    check_indices(run_select(name, half, 9), 9, tokens.num_tokens)


def test_options_are_validated():
    with pytest.raises(ValueError, match="invalid options"):
        get_method("visionzip").validate_options({"contextual_ratio": 1.5})
    with pytest.raises(ValueError, match="invalid options"):
        get_method("holov").validate_options({"crop": 3})


def test_cdpruner_greedy_map_on_a_built_kernel():
    # L = [[1, .9, 0], [.9, 1, 0], [0, 0, .5]]: the first pick is token 0 (gain 1, tie with 1 -> lower index);
    # then token 1 adds 1 - .81 = .19 and token 2 adds .5, so {0, 2}, where top-quality would keep {0, 1}.
    x = torch.tensor([[1.0, 0.0], [0.9, 0.19**0.5], [0.0, 1.0]])
    q = torch.tensor([1.0, 1.0, 0.5**0.5])
    assert torch.equal(dpp_greedy(x, q, 1), torch.tensor([0]))
    assert torch.equal(dpp_greedy(x, q, 2), torch.tensor([0, 2]))
    assert torch.equal(dpp_greedy(x, q, 3), torch.tensor([0, 1, 2]))


def test_cdpruner_keeps_what_the_instruction_asks_about():
    # Orthonormal tokens (S = I, L = diag(r^2)): the DPP keeps the most relevant tokens.
    features = torch.eye(6)
    text = torch.stack([torch.eye(6)[4] + 0.5 * torch.eye(6)[1]])
    rel = instruction_relevance(features, text)
    assert torch.allclose(rel, torch.tensor([0.0, 0.5, 0.0, 0.0, 1.0, 0.0]))
    asked = ImageTokens(features=features, text=text)
    assert torch.equal(run_select("cdpruner", asked, 2), torch.tensor([1, 4]))
    # Relevance-zero tokens add no volume; the third pick fills from the most relevant left (lowest index on ties).
    assert torch.equal(run_select("cdpruner", asked, 3), torch.tensor([0, 1, 4]))
    # Without an instruction every token is equally relevant: ties go to the lower index.
    assert torch.equal(run_select("cdpruner", ImageTokens(features=features), 2), torch.tensor([0, 1]))


def test_cdpruner_skips_duplicates_and_meets_the_budget_past_the_kernel_rank():
    base = torch.nn.functional.normalize(torch.randn(3, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    features = base.repeat(4, 1)  # 12 tokens, rank 3: tokens i, i+3, i+6, i+9 are copies
    idx = run_select("cdpruner", ImageTokens(features=features), 3)
    assert torch.equal(idx, torch.tensor([0, 1, 2]))  # one of each, never a copy while a new direction is left
    check_indices(run_select("cdpruner", ImageTokens(features=features), 7), 7, 12)


def test_cdpruner_depends_on_the_instruction():
    tokens = make_tokens((1, 6, 8))
    gen = torch.Generator().manual_seed(3)
    a = ImageTokens(features=tokens.features, text=torch.randn(4, 16, generator=gen))
    b = ImageTokens(features=tokens.features, text=torch.randn(4, 16, generator=gen))
    assert not torch.equal(run_select("cdpruner", a, 8), run_select("cdpruner", b, 8))


def test_prunesid_principal_groups():
    # Tokens +-3 e0 and +-1 e1: two components, each token on its own axis with |loading| = its length.
    features = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]])
    group, importance = principal_groups(features, 2)
    assert group.tolist() == [0, 0, 1, 1]
    assert torch.allclose(importance, torch.tensor([3.0, 3.0, 1.0, 1.0]), atol=1e-5)
    group, importance = principal_groups(features, 1)
    assert group.tolist() == [0, 0, 0, 0]
    assert torch.allclose(importance, torch.tensor([3.0, 3.0, 0.0, 0.0]), atol=1e-5)


def test_prunesid_group_nms():
    x = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]]), dim=-1)
    importance = torch.tensor([0.9, 1.0, 0.5])
    # Best first: 1 kept; 0 suppressed (cos 0.995 > 0.8); 2 kept.
    assert group_nms(x, importance, 2, 0.8) == [1, 2]
    assert group_nms(x, importance, 3, 0.8) == [1, 2, 0]  # short of its quota: the suppressed fill in
    assert group_nms(x, importance, 2, 1.0) == [1, 0]  # no suppression: plain importance order


def test_prunesid_suppresses_a_near_duplicate_in_favour_of_a_distinct_token():
    # Group A (the e0 component) = {0, 1, 2, 3, 6}, group B (e1) = {4, 5}; k = 4 splits 5:2 as 3 + 1.
    # A by |loading|: 0, 1, 2, 3, 6; token 1 is a near-copy of 0 (cos 0.997) and is skipped for 3.
    features = torch.tensor([[4.0, 0, 0], [3.9, 0, 0.3], [-4.0, 0, 0], [-3.0, 0, -3.0],
                             [0, 2.0, 0], [0, -2.0, 0], [-0.9, 0, 0]])
    tokens = ImageTokens(features=features)
    assert torch.equal(run_select("prunesid", tokens, 4, components=2), torch.tensor([0, 2, 3, 4]))
    assert torch.equal(run_select("prunesid", tokens, 4, components=2, nms_threshold=1.0), torch.tensor([0, 1, 2, 4]))


@pytest.mark.parametrize("shape", [(40, 64), (300, 16)])  # the X X^T and the X^T X branch
def test_prunesid_loadings_match_the_svd(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    group, importance = principal_groups(x, 8)
    u, s, _ = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    ref_importance, ref_group = (u[:, :8] * s[:8]).abs().max(dim=1)
    assert torch.equal(group, ref_group)
    assert torch.allclose(importance, ref_importance, atol=1e-3)
