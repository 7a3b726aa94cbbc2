"""The engine on a tiny LLaVA: stock equivalence, batching, positions, errors."""

import pytest
import torch

from restore import Engine, ReductionConfig, Request, RestoreConfig
from restore.engine import PromptTooLong
from restore.plan import Plan, validate
from restore.tokens import ImageTokens
from tests.helpers.images import make_image

PROMPT = "<image> what is in the image ?"


@pytest.fixture(scope="module")
def engine(llava):
    model, processor = llava
    return Engine(model, processor)


def test_none_reproduces_stock_generate(engine, llava):
    model, processor = llava
    for images, prompt in [([make_image(0)], PROMPT), ([make_image(1), make_image(2, (31, 17))], "<image> <image> how many")]:
        inputs = processor(text=prompt, images=images, return_tensors="pt")
        ref = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        ref = ref[ref != 2].tolist()  # the engine stops before eos
        out = engine.generate([Request(prompt, images)], max_new_tokens=8)[0]
        assert out.token_ids == ref[: len(out.token_ids)] and len(out.token_ids) == len(ref)
        with torch.no_grad():
            stock = model(**inputs).logits[0, -1]
        assert torch.allclose(engine.score([Request(prompt, images)])[0], stock, atol=1e-5)


MIXED = [
    Request(PROMPT, [make_image(3)], reduction=ReductionConfig(method="random", budget=9)),
    Request("<image> <image> how many", [make_image(4), make_image(5, (40, 12))],
            reduction=ReductionConfig(method="pool", budget=4, restore=RestoreConfig(enabled=False))),
    Request("describe a photo of <image>", [make_image(6)], reduction=ReductionConfig(method="pool", budget=0.25)),
    Request(PROMPT, [make_image(7)]),
]


def test_batch_invariance_mixed_requests(engine):
    batched = engine.generate(MIXED, max_new_tokens=6)
    for request, result in zip(MIXED, batched):
        alone = engine.generate([request], max_new_tokens=6)[0]
        assert alone.token_ids == result.token_ids
    logits = engine.score(MIXED)
    for i, request in enumerate(MIXED):
        assert torch.allclose(engine.score([request])[0], logits[i], atol=1e-4)
    assert [r.stats.kept_tokens for r in batched] == [9, 8, 9, 36]
    assert batched[1].stats.visual_tokens == 72


def test_restore_changes_logits_and_gamma1_off_compact_equals_base(engine):
    image = make_image(8)
    base = ReductionConfig(method="random", budget=9, restore=RestoreConfig(enabled=False))
    neutral = ReductionConfig(
        method="random", budget=9, restore=RestoreConfig(gamma=1.0, calibration="off", positions="compact")
    )
    full = ReductionConfig(method="random", budget=9)
    a, b, c = engine.score([Request(PROMPT, [image], reduction=r) for r in (base, neutral, full)])
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)


def test_positions_after_reduction(engine):
    request = Request(PROMPT, [make_image(9)])
    prepared = [engine.adapter.prepare(request, 0)]
    seq = engine.adapter.encode(prepared)[0]
    span = seq.spans[0]
    for policy in ["median", "compact"]:
        plan = Plan.of(ReductionConfig(method="random", budget=8, restore=RestoreConfig(positions=policy)))
        out = plan.apply(seq, [span.importance])
        assert out.length == seq.length - span.length + 8
        if policy == "median":
            # Text after the image keeps its full-sequence positions; decoding continues from full length.
            assert out.positions[-1, 0].item() == seq.length - 1
            assert out.next_position.item() == seq.length
            kept = plan.method.select(ImageTokens(features=seq.embeds[span.start : span.end].float()), 4, plan.options)
            vis = out.positions[out.spans[0].start : out.spans[0].end, 0].tolist()
            assert set((kept + span.start).tolist()) <= set(vis)
        else:
            assert out.positions[:, 0].tolist() == list(range(out.length))
            assert out.next_position.item() == out.length


def test_budget_larger_than_image_keeps_all_unless_strict(engine):
    image = make_image(10)
    loose = engine.generate([Request(PROMPT, [image], reduction=ReductionConfig(method="random", budget=500))], max_new_tokens=2)
    assert loose[0].stats.kept_tokens == 36
    with pytest.raises(ValueError, match="larger than the 36 visual tokens"):
        engine.generate([Request(PROMPT, [image], reduction=ReductionConfig(method="random", budget=500, strict_budget=True))])


def test_bad_inputs_get_clear_errors(engine, tmp_path):
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        validate(ReductionConfig(method="nope"))
    for bad in [0, -3, 1.5]:
        with pytest.raises(ValueError, match="budget"):
            ReductionConfig(method="random", budget=bad)
    with pytest.raises(ValueError, match="extra"):
        ReductionConfig(method="random", bugdet=3)
    with pytest.raises(ValueError, match="gamma"):
        RestoreConfig(gamma=1.5)
    with pytest.raises(ValueError, match="placeholder"):
        engine.generate([Request("what is this ?", [make_image(0)])])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="request 0 image 0: cannot read image .*junk.png"):
        engine.generate([Request(PROMPT, [junk])])
    with pytest.raises(ValueError, match="cannot read image"):
        engine.generate([Request(PROMPT, [tmp_path / "missing.jpg"])])
    with pytest.raises(ValueError, match="empty bytes"):
        engine.generate([Request(PROMPT, [b""])])
    with pytest.raises(ValueError, match="max_new_tokens"):
        engine.generate([Request(PROMPT, [make_image(0)])], max_new_tokens=0)


def test_sampling_is_seeded(engine):
    req = [Request(PROMPT, [make_image(11)])]
    a = engine.generate(req, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, seed=3)
    b = engine.generate(req, max_new_tokens=6, do_sample=True, temperature=1.5, top_p=0.9, seed=3)
    assert a[0].token_ids == b[0].token_ids


def test_a_vanishing_temperature_samples_the_greedy_token(engine):
    req = [Request(PROMPT, [make_image(11)])]
    greedy = engine.generate(req, max_new_tokens=4)[0].token_ids
    for t in (1e-300, 5e-324):
        assert engine.generate(req, max_new_tokens=4, do_sample=True, temperature=t, seed=1)[0].token_ids == greedy


def test_empty_invalid_and_overlong_prompts_are_named_errors(engine):
    model_ctx = engine.context_length
    with pytest.raises(ValueError, match="request 1: the prompt is empty and there is no image or video"):
        engine.generate([Request(PROMPT, [make_image(0)]), Request("")], max_new_tokens=1)
    with pytest.raises(ValueError, match="request 0: the prompt is not valid Unicode text .* at character 8"):
        engine.generate([Request("<image>a\udc00b", [make_image(0)])], max_new_tokens=1)
    with pytest.raises(ValueError, match=f"request 0: .* exceed this model's context of {model_ctx} tokens"):
        engine.generate([Request(PROMPT, [make_image(0)])], max_new_tokens=model_ctx)
    with pytest.raises(PromptTooLong, match="request 2: the prompt has .* more than the limit of 5"):
        engine.prepare_one(Request(PROMPT, [make_image(0)]), 2, max_prompt_tokens=5)


def test_fastv_in_llm_infinite_budget_equals_stock(engine):
    request = Request(PROMPT, [make_image(12)])
    stock = engine.generate([request], max_new_tokens=8)[0]
    for on in (True, False):
        red = ReductionConfig(method="fastv", budget=10_000, restore=RestoreConfig(enabled=on))
        out = engine.generate([Request(PROMPT, [make_image(12)], reduction=red)], max_new_tokens=8)[0]
        assert out.token_ids == stock.token_ids
        assert out.stats.kept_tokens == 36


def test_fastv_batches_with_other_layers_and_cache_holds_what_each_layer_saw(engine):
    requests = [
        Request(PROMPT, [make_image(13)], reduction=ReductionConfig(method="fastv", budget=9)),
        Request("<image> <image> how many", [make_image(14), make_image(15)], reduction=ReductionConfig(method="random", budget=5)),
        Request(PROMPT, [make_image(16)], reduction=ReductionConfig(method="fastv", budget=4, layer=1, restore=RestoreConfig(enabled=False))),
    ]
    batched = engine.generate(requests, max_new_tokens=6)
    for request, result in zip(requests, batched):
        assert engine.generate([request], max_new_tokens=6)[0].token_ids == result.token_ids
    assert [r.stats.kept_tokens for r in batched] == [9, 10, 4]

    plans = [Plan.of(requests[0].reduction)]
    pre = engine._prefill([engine.adapter.prepare(requests[0], 0)], plans)
    full = pre.visual[0] + (pre.seqs[0].length - 9)
    lengths = [pre.cache.layers[i].keys.shape[2] for i in range(len(pre.cache.layers))]
    assert lengths == [full, full, pre.seqs[0].length]


def test_fastv_restore_changes_output(engine):
    image = make_image(17)
    on, off = engine.score([
        Request(PROMPT, [image], reduction=ReductionConfig(method="fastv", budget=6)),
        Request(PROMPT, [image], reduction=ReductionConfig(method="fastv", budget=6, restore=RestoreConfig(enabled=False))),
    ])
    assert not torch.allclose(on, off, atol=1e-4)


def test_pyramiddrop_stages_shrink_geometrically_and_cache_follows(engine):
    red = ReductionConfig(method="pyramiddrop", budget=4, options={"layers": [1, 2]})
    request = Request(PROMPT, [make_image(18)], reduction=red)
    out = engine.generate([request, Request(PROMPT, [make_image(19)])], max_new_tokens=4)
    assert out[0].token_ids == engine.generate([request], max_new_tokens=4)[0].token_ids
    assert out[0].stats.kept_tokens == 4
    pre = engine._prefill([engine.adapter.prepare(request, 0)], [Plan.of(red)])
    text = pre.seqs[0].length - 4
    # 36 visual tokens -> round(36 * (4/36)^(1/2)) = 12 at layer 1 -> 4 at layer 2.
    assert [pre.cache.layers[i].keys.shape[2] for i in range(3)] == [text + 36, text + 12, text + 4]
    assert out[0].stats.size_mean * 4 == pytest.approx(36)  # RESTORE merged what each stage dropped


def test_in_llm_layer_beyond_model_depth_is_an_error(engine):
    with pytest.raises(ValueError, match="beyond this model's 3 decoder layers"):
        engine.generate([Request(PROMPT, [make_image(0)], reduction=ReductionConfig(method="fastv", budget=4, layer=3))])
    with pytest.raises(ValueError, match="options.layers"):
        validate(ReductionConfig(method="pyramiddrop", budget=4, layer=2))
    with pytest.raises(ValueError, match="ascending"):
        validate(ReductionConfig(method="pyramiddrop", budget=4, options={"layers": [2, 1]}))


def test_full_prefill_estimate_counts_each_layer_at_the_length_it_saw(engine):
    from restore.flops import prefill_flops

    shapes, depth = engine.shapes, engine.shapes["layers"]
    full = engine.generate([Request(PROMPT, [make_image(8)])], max_new_tokens=1)[0].stats
    assert full.full_prefill_ms_est == full.prefill_ms  # nothing reduced: estimate = measurement
    n_full = full.prompt_tokens
    assert full.layer_tokens == [n_full] * depth
    for cfg, lengths in [
        (ReductionConfig(method="visionzip", budget=9), lambda kept: [kept] * depth),
        # FastV at K=2: layers 0 and 1 ran every token, so they save nothing.
        (ReductionConfig(method="fastv", budget=9, layer=2), lambda kept: [n_full] * 2 + [kept] * (depth - 2)),
    ]:
        s = engine.generate([Request(PROMPT, [make_image(8)], reduction=cfg)], max_new_tokens=1)[0].stats
        assert s.layer_tokens == lengths(s.prompt_tokens)
        ratio = prefill_flops([n_full] * depth, shapes) / prefill_flops(lengths(s.prompt_tokens), shapes)
        assert s.full_prefill_ms_est == pytest.approx(s.prefill_ms * ratio)
        assert ratio > 1


def test_default_in_llm_layers_fit_a_shallow_model(engine):
    from restore.flops import prefill_flops
    from restore.plan import fit_layers

    assert fit_layers(ReductionConfig(method="fastv", budget=9), 32).layer == 2  # LLaVA-1.5-7B: the paper's K
    assert fit_layers(ReductionConfig(method="fastv", budget=9), 4).layer == 1
    assert fit_layers(ReductionConfig(method="pyramiddrop", budget=9), 4).options == {"layers": [1, 2, 3]}
    assert fit_layers(ReductionConfig(method="fastv", budget=9, layer=3), 4).layer == 3  # given: kept
    assert fit_layers(ReductionConfig(method="divprune", budget=9), 4).layer is None
    # The 3-layer tiny model runs FastV's default at K=1 instead of failing at K=2 of 32 ...
    depth = engine.shapes["layers"]
    s = engine.generate([Request(PROMPT, [make_image(8)], reduction=ReductionConfig(method="fastv", budget=9))],
                        max_new_tokens=1)[0].stats
    n_full = s.prompt_tokens - s.kept_tokens + s.visual_tokens
    lengths = [n_full] + [s.prompt_tokens] * (depth - 1)
    assert s.layer_tokens == lengths
    ratio = prefill_flops([n_full] * depth, engine.shapes) / prefill_flops(lengths, engine.shapes)
    assert s.full_prefill_ms_est == pytest.approx(s.prefill_ms * ratio)
    # ... and a layer the user set beyond the model still fails, naming the field.
    with pytest.raises(ValueError, match="ReductionConfig.layer"):
        engine.generate([Request(PROMPT, [make_image(8)], reduction=ReductionConfig(method="fastv", budget=9, layer=5))],
                        max_new_tokens=1)
    with pytest.raises(ValueError, match="3 stages do not fit a 3-layer model"):
        engine.generate([Request(PROMPT, [make_image(8)], reduction=ReductionConfig(method="pyramiddrop", budget=9))],
                        max_new_tokens=1)


def test_tower_stops_at_the_layer_it_reads_and_scores_come_from_that_layer(engine, llava):
    model, processor = llava
    encoder = engine.adapter._tower().encoder
    depth = len(encoder.layers)
    ran = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, layer in enumerate(encoder.layers)]
    px = processor(text="<image> <image> how many", images=[make_image(0), make_image(1)], return_tensors="pt")["pixel_values"]
    try:
        feats, imps, keys = engine.adapter.encode_images(px)
    finally:
        for h in hooks:
            h.remove()
    assert ran == list(range(depth - 1))  # vision_feature_layer -2: the last layer's output is never read
    assert len(encoder.layers) == depth  # the tower is whole again afterwards
    cfg = model.config
    with torch.no_grad():
        stock = model.model.get_image_features(pixel_values=px, vision_feature_layer=cfg.vision_feature_layer,
                                               vision_feature_select_strategy="default", return_dict=True)
        hidden = model.model.vision_tower(px, output_hidden_states=True).hidden_states[-3]  # entering layer depth-2
        layer = encoder.layers[depth - 2]
        x = layer.layer_norm1(hidden)
        heads = layer.self_attn.num_heads
        q = layer.self_attn.q_proj(x).unflatten(-1, (heads, -1))
        k = layer.self_attn.k_proj(x).unflatten(-1, (heads, -1))
        attn = torch.softmax(torch.einsum("bhd,bshd->bhs", q[:, 0], k) * q.shape[-1] ** -0.5, dim=-1).mean(dim=1)
    for i in range(2):
        assert torch.allclose(feats[i], stock.pooler_output[i], atol=1e-6)
        assert torch.allclose(imps[i], attn[i, 1:], atol=1e-6)
        assert torch.allclose(keys[i], k[i, 1:].flatten(1), atol=1e-6)


def test_stock_model_still_works_after_the_engine_ran_the_tower_first():
    # transformers hooks a tower's layers at its first call; if that call is the engine's shortened tower,
    # the stock model's own later call must still see every layer's hidden state.
    from tests.helpers.tiny import tiny_llava

    model, processor = tiny_llava()
    engine = Engine(model, processor)
    engine.score([Request(PROMPT, [make_image(0)])])
    inputs = processor(text=PROMPT, images=[make_image(0)], return_tensors="pt")
    with torch.no_grad():
        stock = model(**inputs).logits[0, -1]
    assert torch.allclose(engine.score([Request(PROMPT, [make_image(0)])])[0], stock, atol=1e-5)
