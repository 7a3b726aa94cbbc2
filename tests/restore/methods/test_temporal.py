"""`temporal`: same-place runs across frames, then a spatial method, as one Assignment."""

from __future__ import annotations

import pytest
import torch

from restore import Engine, Request, RestoreConfig
from restore.methods import get_method
from restore.plan import Plan
from restore.rectify.anchors import restore_assignment
from restore.tokens import ImageTokens
from tests.helpers.images import frames, make_image
from tests.helpers.tiny import FAMILIES, tiny_llava, tiny_reduction

TEMPORAL = get_method("temporal")
T, H, W = 8, 3, 4
P = H * W


def opts(**kw):
    return TEMPORAL.validate_options(kw)


def static_clip(seed: int = 0) -> ImageTokens:
    gen = torch.Generator().manual_seed(seed)
    return ImageTokens(features=torch.randn(P, 16, generator=gen).repeat(T, 1), grid=(T, H, W))


def half_static_clip(seed: int = 0) -> ImageTokens:
    """Places 0..5 never change; the others are new every frame."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, P, 16, generator=gen)
    x[:, :6] = x[0, :6]
    return ImageTokens(features=x.flatten(0, 1), importance=torch.rand(T * P, generator=gen), grid=(T, H, W))


def place(i: torch.Tensor) -> torch.Tensor:
    return i % P


def assert_valid(a, n: int, num: int) -> None:
    assert a.num_slots == n and a.num_tokens == num
    live = a.slot[a.slot >= 0]
    assert torch.equal(torch.unique(live), torch.arange(n))  # every slot has members
    assert bool((a.slot[a.rep] == torch.arange(n)).all())  # each rep sits in its own slot


def test_static_clip_collapses_to_one_frame():
    tokens = static_clip()
    a = TEMPORAL.reduce(tokens, P, opts())
    assert_valid(a, P, T * P)
    assert a.sizes().tolist() == [float(T)] * P
    for s in range(P):
        assert place(a.members(s)).unique().numel() == 1  # a run stays at its place
    # Fewer than one frame: the spatial method picks among whole runs; nothing partial.
    small = TEMPORAL.reduce(tokens, 5, opts())
    assert_valid(small, 5, T * P)
    assert small.sizes().tolist() == [float(T)] * 5
    # select: the first frame's tokens are the runs' representatives.
    assert torch.equal(TEMPORAL.select(tokens, P, opts()), torch.arange(P))
    assert bool((TEMPORAL.select(tokens, 5, opts()) < P).all())


@pytest.mark.parametrize("n", [P + 1, P + 7, 3 * P, T * P - 1])
def test_budget_above_one_frame_stops_merging_at_exactly_n(n):
    tokens = static_clip(1)
    a = TEMPORAL.reduce(tokens, n, opts())
    assert_valid(a, n, T * P)
    assert bool((a.slot >= 0).all())  # nothing dropped: the runs are only cut shorter
    sizes = a.sizes()
    for p in range(P):
        slots = a.slot[torch.arange(p, T * P, P)].unique()
        assert sizes[slots].sum() == T  # the slots at each place hold its T tokens
        for s in slots.tolist():
            assert bool((place(a.members(s)) == p).all())
    k = TEMPORAL.select(tokens, n, opts())
    assert k.numel() == n and torch.equal(k, torch.unique(k))


def test_most_similar_pairs_merge_first():
    # Two places over two frames: place 0 nearly repeats (0.99), place 1 less so (0.95).
    f0 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f1 = torch.tensor([[0.99, (1 - 0.99**2) ** 0.5], [(1 - 0.95**2) ** 0.5, 0.95]])
    tokens = ImageTokens(features=torch.cat([f0, f1]), grid=(2, 1, 2))
    a = TEMPORAL.reduce(tokens, 3, opts())
    assert a.slot[0] == a.slot[2] and a.slot[1] != a.slot[3]
    assert sorted(TEMPORAL.select(tokens, 3, opts()).tolist()) == [0, 1, 3]


@pytest.mark.parametrize("spatial", ["divprune", "pool", "random", "visionzip", "tome"])
@pytest.mark.parametrize("n", [1, 4, 10, 30, 54, 60])
def test_exact_budget_runs_stay_together_and_deterministic(spatial, n):
    tokens = half_static_clip()
    o = opts(spatial=spatial)
    a = TEMPORAL.reduce(tokens, n, o)
    assert_valid(a, n, T * P)
    if n <= 6 + 6 * T:  # 54 runs: a static place is one run, its tokens share a fate
        for p in range(6):
            assert a.slot[torch.arange(p, T * P, P)].unique().numel() == 1
    else:  # more slots than runs: runs are cut, nothing is dropped
        assert bool((a.slot >= 0).all())
    b = TEMPORAL.reduce(tokens, n, o)
    assert torch.equal(a.slot, b.slot) and torch.equal(a.rep, b.rep)
    k = TEMPORAL.select(tokens, n, o)
    assert k.numel() == n and torch.equal(k, torch.unique(k))
    assert torch.equal(k, TEMPORAL.select(tokens, n, o))
    # Under RESTORE the sizes still account for every token.
    r = restore_assignment(tokens, n, TEMPORAL, o, RestoreConfig())
    assert_valid(r, n, T * P)
    assert r.sizes().sum() == T * P


def test_pool_spatial_merges_runs_and_random_drops_whole_runs():
    tokens = half_static_clip(3)
    pooled = TEMPORAL.reduce(tokens, 6, opts(spatial="pool"))
    assert bool((pooled.slot >= 0).all()) and pooled.sizes().sum() == T * P
    sampled = TEMPORAL.reduce(tokens, 6, opts(spatial="random", spatial_options={"seed": 4}))
    assert sampled.sizes().tolist() == [1.0 if int(r) % P >= 6 else float(T) for r in sampled.rep]
    other = TEMPORAL.reduce(tokens, 6, opts(spatial="random", spatial_options={"seed": 5}))
    assert not torch.equal(sampled.rep, other.rep)


def test_no_duplicates_equals_the_spatial_method_on_the_tokens():
    gen = torch.Generator().manual_seed(7)
    tokens = ImageTokens(features=torch.randn(T * P, 16, generator=gen), grid=(T, H, W))
    divprune = get_method("divprune")
    assert torch.equal(TEMPORAL.select(tokens, 9, opts()), divprune.select(tokens, 9, divprune.validate_options({})))


@pytest.mark.parametrize("grid", [None, (1, H, W)])
def test_images_degenerate_to_the_spatial_method(grid):
    gen = torch.Generator().manual_seed(8)
    tokens = ImageTokens(features=torch.randn(P, 16, generator=gen), grid=grid)
    pool = get_method("pool")
    a, b = TEMPORAL.reduce(tokens, 4, opts(spatial="pool")), pool.reduce(tokens, 4, pool.validate_options({}))
    assert torch.equal(a.slot, b.slot) and torch.equal(a.rep, b.rep)
    assert torch.equal(TEMPORAL.select(tokens, 4, opts(spatial="pool")), pool.select(tokens, 4, pool.validate_options({})))


def test_keys_decide_similarity_when_given():
    tokens = static_clip()
    gen = torch.Generator().manual_seed(9)
    with_keys = ImageTokens(features=tokens.features, keys=torch.randn(T * P, 8, generator=gen), grid=tokens.grid)
    a = TEMPORAL.reduce(with_keys, P, opts())
    assert a.sizes().max() < T  # the keys say no two frames repeat


@pytest.mark.parametrize("bad", [{"spatial": "temporal"}, {"spatial": "none"}, {"spatial": "fastv"},
                                 {"spatial": "nope"}, {"threshold": 1.5}, {"spatial": "random", "spatial_options": {"x": 1}}])
def test_bad_options_are_errors(bad):
    with pytest.raises(ValueError, match="temporal"):
        TEMPORAL.validate_options(bad)


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    factory, image, video = FAMILIES[request.param]
    return Engine(*factory()), image, video


@pytest.mark.parametrize("restore_on", [True, False])
def test_engine_video_static_and_moving(family, restore_on):
    engine, image, video = family
    static = [make_image(30, (56, 56))] * 8
    requests = [
        Request(f"{video} what is moving ?", video=static, fps=2.0, reduction=tiny_reduction("temporal", 2, restore_on)),
        Request(f"{video} what is moving ?", video=frames(4, seed=31), fps=2.0,
                reduction=tiny_reduction("temporal", 0.3, restore_on)),
        Request(f"{image} what is in the image ?", [make_image(32, (56, 56))], reduction=tiny_reduction("temporal", 3, restore_on)),
    ]
    seqs = engine.adapter.encode([engine.adapter.prepare(r, i) for i, r in enumerate(requests)])
    spans = [seq.spans[0] for seq in seqs]
    first = engine.generate(requests, max_new_tokens=3)
    assert [r.stats.kept_tokens for r in first] == [
        2 * spans[0].frames, max(1, round(0.3 * spans[1].length)), 3
    ]
    assert [r.token_ids for r in engine.generate(requests, max_new_tokens=3)] == [r.token_ids for r in first]
    for request, result in zip(requests, first):
        assert engine.generate([request], max_new_tokens=3)[0].token_ids == result.token_ids


def test_engine_static_video_keeps_one_frame_of_runs(family):
    engine, _, video = family
    request = Request(f"{video} what is moving ?", video=[make_image(33, (56, 56))] * 8, fps=2.0)
    seq = engine.adapter.encode([engine.adapter.prepare(request, 0)])[0]
    span = seq.spans[0]
    t, h, w = span.grid
    assert t > 1
    plan = Plan.of(tiny_reduction("temporal", 1 / t, False))
    out = plan.apply(seq, [span.importance])
    reduced = out.spans[0]
    assert reduced.length == h * w
    assert out.sizes[reduced.start : reduced.end].tolist() == [float(t)] * (h * w)


@pytest.mark.parametrize("restore_on", [True, False])
def test_llava_frames_as_images_degenerate_and_keep_budget(llava, restore_on):
    engine = Engine(*llava)
    clip = [make_image(40)] * 2 + [make_image(41)]
    request = Request("<image> <image> <image> what is moving ?", clip, reduction=tiny_reduction("temporal", 5, restore_on))
    seq = engine.adapter.encode([engine.adapter.prepare(request, 0)])[0]
    assert [s.frames for s in seq.spans] == [1, 1, 1]  # each image its own single-frame span
    first = engine.generate([request], max_new_tokens=3)[0]
    assert first.stats.kept_tokens == 15
    assert engine.generate([request], max_new_tokens=3)[0].token_ids == first.token_ids
    spatial = Request(request.prompt, clip, reduction=tiny_reduction("divprune", 5, restore_on))
    assert torch.allclose(engine.score([request]), engine.score([spatial]))


def test_llava_video_frames_form_one_clip_span():
    """LLaVA's multi-image video: adjacent frames are one (T, H, W) span; text between frames keeps them apart."""
    model, processor = tiny_llava()
    engine = Engine(model, processor)
    clip = frames(4, seed=3, size=(12, 12))
    adjacent = Request("<s> <image><image><image><image> what is moving ?", video=clip)
    apart = Request("<s> <image> then <image> then <image> then <image> ?", video=clip)
    still = Request("<s> <image> <image> ?", images=clip[:2])
    seqs = engine.adapter.encode([engine.adapter.prepare(r, i) for i, r in enumerate([adjacent, apart, still])])
    assert [s.grid for s in seqs[0].spans] == [(4, 6, 6)]
    assert [s.grid for s in seqs[1].spans] == [(1, 6, 6)] * 4
    assert [s.grid for s in seqs[2].spans] == [(1, 6, 6)] * 2
    assert seqs[0].spans[0].importance.shape == (4 * 36,)
    rc = tiny_reduction("temporal", 5, restore_on=True)
    out = Plan.of(rc).apply(seqs[0], [s.importance for s in seqs[0].spans])
    assert out.spans[0].length == 5 * 4  # the budget is per frame
    result = engine.generate([Request(adjacent.prompt, video=clip, reduction=rc)], max_new_tokens=2)[0]
    assert result.stats.kept_tokens == 20
