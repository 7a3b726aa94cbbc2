"""Continuous batching (restore.runtime.scheduler): requests that join a running batch at different steps,
leave early or are cancelled get exactly the tokens, logits, per-layer cache and calibration they get alone;
admission counts KV-cache tokens, so reduced requests run more at once; sampling, stops and streaming are
per request."""

from __future__ import annotations

import pytest
import torch

from restore import Engine, GenerationConfig, ReductionConfig, Request, RestoreConfig
from restore.runtime.batch import layout_at
from restore.runtime.scheduler import RequestCancelled, Scheduler
from tests.helpers.images import frames, make_image
from tests.helpers.tiny import FAMILIES, tiny_reduction

PROMPT = "<image> what is in the image ?"


@pytest.fixture(scope="module")
def engine(llava):
    model, processor = llava
    return Engine(model, processor)


def gen(n: int, **kw) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=n, **kw)


def alone(engine: Engine, request: Request, generation: GenerationConfig):
    """Tokens and per-step logits of `request` run by itself."""
    scheduler = Scheduler(engine)
    handle = scheduler.submit(request, generation, keep_logits=True)
    scheduler.run_until_idle()
    return handle.result().token_ids, handle.logits


def row_view(layouts, cache, row: int, layer: int):
    """What decoder `layer` holds for one row of a batch, padding removed: positions, the log sizes the bias
    adds there and which keys are calibrated; and the row's cached keys."""
    lay = layout_at(layouts, layer)
    valid = lay.valid[row]
    log = lay.log_first if layer == lay.start_layer else lay.log_size
    keys = cache.layers[layer].keys[row][:, valid]
    return lay.positions[row][valid], log[row][valid], lay.calibrated[row][valid], keys


def check_rows_as_alone(engine: Engine, scheduler: Scheduler, references: dict) -> None:
    """Every running row's cache and layout, layer by layer, are those of its request prefilled alone (plus
    the tokens it has been fed since)."""
    batch = scheduler.batch
    depth = len(engine.adapter.text_model.layers)
    lengths = batch.row_lengths()
    for row, work in enumerate(scheduler._rows):
        ref = references.get(work.id)
        if ref is None:
            ref = engine._prefill([engine.adapter.prepare(work.request, 0)], [work.plan])
            references[work.id] = ref
        fed = lengths[row][0] - ref.layer_tokens[0][0]
        assert lengths[row] == [n + fed for n in ref.layer_tokens[0]]
        for layer in range(depth):
            pos, log, cal, keys = row_view(batch.layouts, batch.cache, row, layer)
            rpos, rlog, rcal, rkeys = row_view(ref.layouts, ref.cache, 0, layer)
            n = rpos.shape[0]
            assert pos.shape[0] == n + fed == lengths[row][layer]
            assert torch.equal(pos[:n], rpos) and torch.equal(log[:n], rlog) and torch.equal(cal[:n], rcal)
            assert not cal[n:].any() and not log[n:].any()  # decoded tokens: text, size 1
            assert torch.allclose(keys[:, :n], rkeys, atol=1e-5)


def run_staggered(scheduler: Scheduler, arrivals: list, cancel: dict | None = None, each_step=None) -> dict:
    """Submit arrivals (step, name, request, generation) at their steps, cancel {name: step}, run to idle."""
    handles, step = {}, 0
    pending = sorted(arrivals, key=lambda a: a[0])
    cancel = cancel or {}
    while pending or not scheduler.idle():
        while pending and pending[0][0] <= step:
            _, name, request, generation = pending.pop(0)
            handles[name] = scheduler.submit(request, generation, keep_logits=True)
        for name, at in cancel.items():
            if at == step:
                handles[name].cancel()
        scheduler.step()
        if each_step is not None and scheduler.batch is not None:
            each_step(scheduler)
        step += 1
    return handles


def assert_as_alone(engine, arrivals, handles, cancelled=(), atol=1e-5):
    for _, name, request, generation in arrivals:
        tokens, logits = alone(engine, request, generation)
        got = handles[name].result()
        if name in cancelled:
            assert handles[name].cancelled
            assert got.token_ids == tokens[: len(got.token_ids)]
        else:
            assert got.token_ids == tokens, name
        assert len(handles[name].logits) >= len(got.token_ids)
        for a, b in zip(handles[name].logits, logits):
            assert torch.allclose(a, b, atol=atol), name


def mixed_llava(offset: int = 0) -> list:
    red = ReductionConfig
    return [
        (0, "none", Request(PROMPT, [make_image(20 + offset)]), gen(7)),
        (1, "divprune", Request(PROMPT, [make_image(21 + offset)], reduction=red(method="divprune", budget=6)), gen(5)),
        (1, "fastv-off", Request("<image> <image> how many", [make_image(22 + offset), make_image(23 + offset)],
                                 reduction=red(method="fastv", budget=5, layer=1, restore=RestoreConfig(enabled=False))), gen(8)),
        (3, "pyramiddrop", Request(PROMPT, [make_image(24 + offset)],
                                   reduction=red(method="pyramiddrop", budget=4, options={"layers": [1, 2]})), gen(6)),
        (4, "fastv", Request("describe a photo of <image>", [make_image(25 + offset)],
                             reduction=red(method="fastv", budget=9, layer=2)), gen(3)),
        (6, "divprune-off", Request(PROMPT, [make_image(26 + offset)],
                                    reduction=red(method="divprune", budget=0.25, restore=RestoreConfig(enabled=False))), gen(6)),
    ]


def test_joining_leaving_and_cancelled_requests_match_running_alone(engine):
    arrivals = mixed_llava()
    scheduler = Scheduler(engine, prefill_group=2)
    references: dict = {}
    sizes = []

    def each_step(s):
        check_rows_as_alone(engine, s, references)
        sizes.append(s.batch.cache.layers[0].keys.shape[0])
        assert sizes[-1] == s.running

    handles = run_staggered(scheduler, arrivals, cancel={"divprune": 3}, each_step=each_step)
    assert_as_alone(engine, arrivals, handles, cancelled={"divprune"})
    assert len(handles["divprune"].result().token_ids) == 2 < len(alone(engine, arrivals[1][2], arrivals[1][3])[0])
    assert max(sizes) >= 3 and sizes[-1] < max(sizes)  # rows joined, then left and freed their cache rows
    assert scheduler.batch is None and scheduler.idle()
    stats = handles["pyramiddrop"].result().stats
    assert stats.kept_tokens == 4 and stats.generated_tokens == len(handles["pyramiddrop"].result().token_ids)


def test_cache_shrinks_and_trims_as_rows_leave(engine):
    scheduler = Scheduler(engine)
    long = scheduler.submit(Request(PROMPT, [make_image(30)]), gen(12), keep_logits=True)
    short = scheduler.submit(Request("<image> <image> how many", [make_image(31), make_image(32)]), gen(1))
    scheduler.step()  # both prefilled together; the short one is done after its first token
    assert short.done() and not long.done()
    batch = scheduler.batch
    assert batch.size == 1 and all(layer.keys.shape[0] == 1 for layer in batch.cache.layers)
    # The long padding the two-image request forced is gone: the row holds no padding any more.
    assert batch.layouts[0].valid.all()
    assert batch.cache_lengths() == batch.row_lengths()[0]
    scheduler.run_until_idle()
    tokens, logits = alone(engine, Request(PROMPT, [make_image(30)]), gen(12))
    assert long.result().token_ids == tokens
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(long.logits, logits))


def test_cancel_before_running_and_failing_requests_fail_alone(engine):
    scheduler = Scheduler(engine, max_running=1)
    first = scheduler.submit(Request(PROMPT, [make_image(33)]), gen(4))
    queued = scheduler.submit(Request(PROMPT, [make_image(34)]), gen(4))
    strict = ReductionConfig(method="random", budget=500, strict_budget=True)
    bad = scheduler.submit(Request(PROMPT, [make_image(35)], reduction=strict), gen(4))
    queued.cancel()
    scheduler.run_until_idle()
    with pytest.raises(RequestCancelled):
        queued.result()
    with pytest.raises(ValueError, match="larger than the 36 visual tokens"):
        bad.result()
    assert first.result().token_ids == engine.generate([Request(PROMPT, [make_image(33)])], max_new_tokens=4)[0].token_ids
    with pytest.raises(ValueError, match="placeholder"):
        scheduler.submit(Request("what is this ?", [make_image(0)]))
    with pytest.raises(ValueError, match="beyond this model's 3 decoder layers"):
        scheduler.submit(Request(PROMPT, [make_image(0)], reduction=ReductionConfig(method="fastv", budget=4, layer=3)))


def test_planned_cache_tokens_equal_what_the_prefill_holds(engine):
    depth = len(engine.adapter.text_model.layers)
    for cfg in [
        ReductionConfig(),
        ReductionConfig(method="divprune", budget=5),
        ReductionConfig(method="fastv", budget=7, layer=1),
        ReductionConfig(method="fastv", budget=10_000),
        ReductionConfig(method="pyramiddrop", budget=4, options={"layers": [1, 2]}),
        ReductionConfig(method="pyramiddrop", budget=0.2, options={"layers": [1, 2]}, restore=RestoreConfig(enabled=False)),
    ]:
        request = Request("<image> <image> how many", [make_image(1), make_image(2, (31, 17))], reduction=cfg)
        plan = engine.plan(cfg)
        prep = [engine.adapter.prepare(request, 0)]
        seqs, reduced, timings = engine._encode(prep, [plan])
        pre = engine._prefill_reduced(seqs, reduced, [plan], timings)
        assert plan.layer_lengths(reduced[0], depth) == pre.layer_tokens[0]
        assert [layer.keys.shape[2] for layer in pre.cache.layers] == pre.layer_tokens[0]


def test_admission_counts_cache_tokens_so_reduced_requests_run_more_at_once(engine):
    def peak(reduction, budget_tokens):
        scheduler = Scheduler(engine, max_batch_tokens=budget_tokens, prefill_group=8)
        for i in range(6):
            scheduler.submit(Request(PROMPT, [make_image(40 + i)], reduction=reduction), gen(4))
        most = 0
        while scheduler.step():
            assert scheduler.tokens_in_use <= budget_tokens
            most = max(most, scheduler.running)
        return most, scheduler

    full_cost = Scheduler(engine)
    probe = full_cost.submit(Request(PROMPT, [make_image(40)]), gen(4))
    full_cost.step()
    cost = full_cost._rows[0].cost
    prompt = probe.result().stats.prompt_tokens
    assert cost == prompt + 4  # the cache it holds plus what it may still generate
    budget = 2 * cost
    # 36 visual tokens -> 4 (the 64-of-576 ratio): the reduced request costs its reduced size.
    most_full, _ = peak(None, budget)
    most_reduced, _ = peak(ReductionConfig(method="divprune", budget=4), budget)
    assert most_full == 2
    assert most_reduced >= 2 * most_full
    # An in-LLM method costs its mean over layers: FastV at K=2 of 3 keeps every token in layers 0 and 1.
    fastv = Scheduler(engine)
    fastv.submit(Request(PROMPT, [make_image(40)], reduction=ReductionConfig(method="fastv", budget=4, layer=2)), gen(4))
    fastv.step()
    assert fastv._rows[0].cost == -(-(2 * prompt + (prompt - 32)) // 3) + 4
    # A request that can never fit fails with a clear error instead of waiting for ever.
    tiny = Scheduler(engine, max_batch_tokens=10)
    handle = tiny.submit(Request(PROMPT, [make_image(40)]), gen(4))
    tiny.run_until_idle()
    with pytest.raises(ValueError, match="more than max_batch_tokens 10"):
        handle.result()


def test_max_running_caps_the_batch_and_results_keep_submission_order(engine):
    scheduler = Scheduler(engine, max_running=2, prefill_group=1)
    requests = [Request(PROMPT, [make_image(50 + i)]) for i in range(4)]
    handles = [scheduler.submit(r, gen(3)) for r in requests]
    while scheduler.step():
        assert scheduler.running <= 2
    batched = engine.generate(requests, max_new_tokens=3)
    assert [h.result().token_ids for h in handles] == [r.token_ids for r in batched]
    assert all(r.stats.batch_size == 4 for r in batched)  # generate prefills its list as one group
    assert all(h.result().stats.batch_size == 1 for h in handles)


def test_per_request_sampling_stops_and_streaming_in_one_batch(engine):
    tok = engine.adapter.tokenizer
    plain = Request(PROMPT, [make_image(60)])
    greedy_ids, _ = alone(engine, plain, gen(10))
    text = tok.decode(greedy_ids, skip_special_tokens=True)
    words = text.split()
    stop = words[2] if len(words) > 2 else words[-1]
    expected = next(greedy_ids[:k] for k in range(1, len(greedy_ids) + 1)
                    if stop in tok.decode(greedy_ids[:k], skip_special_tokens=True))
    seeded = gen(8, do_sample=True, temperature=1.5, top_p=0.9, top_k=20, seed=5)
    seeded_ids, _ = alone(engine, Request(PROMPT, [make_image(61)]), seeded)
    deltas: list[str] = []
    streamed: list[int] = []
    scheduler = Scheduler(engine)
    h_greedy = scheduler.submit(plain, gen(10), on_token=lambda t, d: (streamed.append(t), deltas.append(d)))
    h_stop = scheduler.submit(plain, gen(10, stop=[stop]))
    h_seed = scheduler.submit(Request(PROMPT, [make_image(61)]), seeded)
    h_other = scheduler.submit(Request(PROMPT, [make_image(62)]), gen(6, do_sample=True, temperature=0.7))
    h_topk1 = scheduler.submit(Request(PROMPT, [make_image(63)]), gen(6, do_sample=True, top_k=1))
    scheduler.run_until_idle()
    assert h_greedy.result().token_ids == greedy_ids == streamed
    assert "".join(deltas) == text
    assert h_stop.result().token_ids == expected
    assert stop not in h_stop.result().text
    assert h_seed.result().token_ids == seeded_ids  # its own generator: batchmates do not change its draws
    assert len(h_other.result().token_ids) <= 6
    assert h_topk1.result().token_ids == alone(engine, Request(PROMPT, [make_image(63)]), gen(6))[0]


def test_ignore_eos_generates_max_new_tokens_past_an_end_token(engine):
    request = Request(PROMPT, [make_image(64)])
    greedy, _ = alone(engine, request, gen(6))
    assert len(greedy) == 6
    scheduler = Scheduler(engine)
    scheduler.eos = {greedy[2]}  # the greedy path meets this "end" token by step 3
    stops = scheduler.submit(request, gen(6))
    runs_on = scheduler.submit(request, gen(6, ignore_eos=True))
    scheduler.run_until_idle()
    assert stops.result().token_ids == greedy[: greedy.index(greedy[2])]
    assert runs_on.result().token_ids == greedy


def test_done_callbacks_run_once_when_the_request_finishes(engine):
    scheduler = Scheduler(engine)
    calls = []
    handle = scheduler.submit(Request(PROMPT, [make_image(71)]), gen(3))
    handle.add_done_callback(lambda h: calls.append(("early", h.done(), h.result().token_ids)))
    handle.add_done_callback(lambda h: 1 / 0)  # a failing waiter is logged, not raised into the scheduler
    assert calls == []
    scheduler.run_until_idle()
    handle.add_done_callback(lambda h: calls.append(("late", h.done(), h.result().token_ids)))
    ids = handle.result().token_ids
    assert calls == [("early", True, ids), ("late", True, ids)]


def test_handle_result_drives_the_scheduler_and_loop_thread_serves(engine):
    scheduler = Scheduler(engine)
    handle = scheduler.submit(Request(PROMPT, [make_image(70)]), gen(3))
    reference = engine.generate([Request(PROMPT, [make_image(70)])], max_new_tokens=3)[0]
    assert handle.result().token_ids == reference.token_ids
    scheduler.start()
    try:
        handles = [scheduler.submit(Request(PROMPT, [make_image(70)]), gen(3)) for _ in range(3)]
        assert all(h.result(timeout=60).token_ids == reference.token_ids for h in handles)
    finally:
        scheduler.close()


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    factory, image, video = FAMILIES[request.param]
    model, processor = factory()
    return request.param, Engine(model, processor), image, video


def test_families_join_leave_and_cancel_as_alone(family):
    name, engine, img, vid = family
    arrivals = [
        (0, "video", Request(f"<s> {vid} what is moving ?", video=frames(4, seed=10), fps=0.25,
                             reduction=ReductionConfig(method="pool", budget=0.5)), gen(6)),
        (1, "fastv", Request(f"<s> what {img} is it ?", [make_image(4, (84, 56))],
                             reduction=tiny_reduction("fastv", 5, True)), gen(5)),
        (2, "none", Request(f"<s> {img} {img} how many are there ?", [make_image(5, (56, 56)), make_image(6, (56, 112))]),
         gen(7)),
        (2, "pyramiddrop-off", Request(f"<s> what {img} is it ?", [make_image(7, (56, 56))],
                                       reduction=tiny_reduction("pyramiddrop", 3, False)), gen(6)),
        (4, "divprune", Request(f"<s> what {img} is it ?", [make_image(8, (84, 56))],
                                reduction=tiny_reduction("divprune", 4, True)), gen(4)),
    ]
    scheduler = Scheduler(engine, prefill_group=2)
    references: dict = {}
    handles = run_staggered(scheduler, arrivals, cancel={"none": 4},
                            each_step=lambda s: check_rows_as_alone(engine, s, references))
    assert_as_alone(engine, arrivals, handles, cancelled={"none"})


def test_default_model_join_and_leave_as_alone():
    from restore.zoo import world
    from tests.helpers.scenes import HAND

    engine = Engine.from_pretrained("default")
    image = world.render(HAND)
    red = ReductionConfig
    arrivals = [
        (0, "none", Request("what colour is the large triangle ?", [image]), gen(4)),
        (1, "divprune", Request("is there a red square ?", [image], reduction=red(method="divprune", budget=16)), gen(3)),
        (1, "fastv", Request("how many triangles are there ?", [image], reduction=red(method="fastv", budget=16)), gen(4)),
        (2, "pyramiddrop-off", Request("is there a blue triangle ?", [image],
                                       reduction=red(method="pyramiddrop", budget=16, restore=RestoreConfig(enabled=False))),
         gen(5)),
    ]
    scheduler = Scheduler(engine, prefill_group=1)
    references: dict = {}
    handles = run_staggered(scheduler, arrivals, cancel={"none": 1},
                            each_step=lambda s: check_rows_as_alone(engine, s, references))
    assert_as_alone(engine, arrivals, handles, cancelled={"none"}, atol=1e-4)


def test_a_failing_stream_callback_fails_only_its_request(engine):
    scheduler = Scheduler(engine)

    def broken(token, text):
        raise RuntimeError("client went away")

    bad = scheduler.submit(Request(PROMPT, [make_image(71)]), gen(5), on_token=broken)
    good = scheduler.submit(Request(PROMPT, [make_image(72)]), gen(5))
    scheduler.run_until_idle()
    with pytest.raises(RuntimeError, match="client went away"):
        bad.result()
    assert good.result().token_ids == alone(engine, Request(PROMPT, [make_image(72)]), gen(5))[0]


def test_a_decode_step_moves_only_the_chosen_tokens_to_the_host(engine, monkeypatch):
    """Whatever the number of rows, their stop strings, streams and sampling settings, one decode step reads
    the device once: the chosen ids (the stock mask's all-ones check is skipped while our context runs)."""
    names = ["tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"]
    calls: list[str] = []

    def counted(name):
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return original(self, *args, **kwargs)

        return wrapper

    settings = [gen(20, stop=["zzz"]), gen(20, do_sample=True, top_k=5, seed=1), gen(20, do_sample=True, top_p=0.8),
                gen(20)]
    for rows in (1, 4):
        scheduler = Scheduler(engine)
        for i in range(rows):
            reduction = ReductionConfig(method="fastv", budget=4, layer=1) if i % 2 else None
            scheduler.submit(Request(PROMPT, [make_image(80 + i)], reduction=reduction), settings[i],
                             on_token=lambda t, d: None)
        scheduler.step()  # prefill and the first token
        with monkeypatch.context() as mp:
            for name in names:
                mp.setattr(torch.Tensor, name, counted(name))
            calls.clear()
            scheduler._decode_step()
        assert scheduler.running == rows
        assert calls == ["tolist"], calls
