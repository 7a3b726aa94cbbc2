"""The Qwen2.5-VL and LLaVA-OneVision adapters on tiny random models: stock equivalence (images and
video), reduction budgets, batch invariance, M-RoPE positions after reduction, and input errors."""

from __future__ import annotations

import pytest
import torch

from restore import Engine, ReductionConfig, Request, RestoreConfig
from restore.plan import Plan
from restore.tokens import ImageTokens
from tests.helpers.images import frames, make_image
from tests.helpers.tiny import FAMILIES, QWEN_IMAGE, QWEN_VIDEO, tiny_qwen2_5_vl


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    factory, image, video = FAMILIES[request.param]
    model, processor = factory()
    return request.param, model, processor, Engine(model, processor), image, video


def image_request(img: str, **kw) -> Request:
    return Request(f"<s> what {img} is in the image ?", [make_image(0, (84, 56))], **kw)


def video_request(vid: str, **kw) -> Request:
    # fps 0.25: the temporal M-RoPE positions of the second frame pair run past the text after the video.
    return Request(f"<s> {vid} what is moving ?", video=frames(4, seed=10), fps=0.25, **kw)


def stock_inputs(engine: Engine, request: Request) -> dict:
    """What the stock model gets for `request` (the processor's outputs; video tensors as the adapter built them)."""
    prep = engine.adapter.prepare(request, 0)
    ids = prep.input_ids[None]
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), **prep.vision}


def stock_tokens(model, inputs: dict, steps: int = 6) -> list[int]:
    ref = model.generate(**inputs, max_new_tokens=steps, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    return ref[: ref.index(2)] if 2 in ref else ref  # the engine stops before eos


def test_none_reproduces_stock_image_and_video(family):
    name, model, processor, engine, img, vid = family
    image_req = image_request(img)
    # The image request through the processor itself, independent of the adapter.
    direct = processor(text=image_req.prompt, images=[image_req.images] if name == "llava_onevision" else image_req.images,
                       return_tensors="pt")
    for request, inputs in [(image_req, direct), (video_request(vid), stock_inputs(engine, video_request(vid)))]:
        ref = stock_tokens(model, inputs)
        out = engine.generate([request], max_new_tokens=6)[0]
        assert out.token_ids == ref
        with torch.no_grad():
            stock = model(**inputs).logits[0, -1]
        assert torch.allclose(engine.score([request])[0], stock, atol=1e-5)


def test_chat_template_places_images_and_video(family):
    _, model, _, engine, img, vid = family
    chat = Request("what is moving ?", [make_image(1, (56, 56))], video=frames(2, seed=20), fps=1.0)
    raw = Request(f"user : {img} {vid} what is moving ? assistant :", chat.images, video=chat.video, fps=1.0, chat=False)
    a, b = engine.adapter.prepare(chat, 0), engine.adapter.prepare(raw, 0)
    assert torch.equal(a.input_ids, b.input_ids)
    assert engine.generate([chat], max_new_tokens=4)[0].token_ids == stock_tokens(model, stock_inputs(engine, chat), 4)


@pytest.mark.parametrize("method", ["random", "pool"])
@pytest.mark.parametrize("restore", [True, False])
def test_reduction_keeps_budget_per_image(family, method, restore):
    name, _, _, engine, img, vid = family
    rc = ReductionConfig(method=method, budget=3, restore=RestoreConfig(enabled=restore))
    requests = [
        Request(f"<s> {img} {img} how many ?", [make_image(2, (56, 56)), make_image(3, (84, 56))], reduction=rc),
        video_request(vid, reduction=rc),
    ]
    seqs = engine.adapter.encode([engine.adapter.prepare(r, i) for i, r in enumerate(requests)])
    for seq in seqs:
        out = Plan.of(rc).apply(seq, [s.importance for s in seq.spans])
        assert len(out.spans) == len(seq.spans)
        for before, after in zip(seq.spans, out.spans):
            assert after.length == 3 * before.frames  # per image; per frame (pair, for Qwen) for video
            assert before.importance.shape == (before.length,) and torch.isfinite(before.importance).all()
    results = engine.generate(requests, max_new_tokens=3)
    assert [r.stats.kept_tokens for r in results] == [sum(3 * s.frames for s in seq.spans) for seq in seqs]
    assert all(len(r.token_ids) <= 3 for r in results)


def test_batch_invariance_mixed_requests(family):
    _, _, _, engine, img, vid = family
    mixed = [
        Request(f"<s> what {img} is it ?", [make_image(4, (84, 56))], reduction=ReductionConfig(method="random", budget=5)),
        Request(f"<s> {img} {img} how many are there ?", [make_image(5, (56, 56)), make_image(6, (56, 112))],
                reduction=ReductionConfig(method="pool", budget=4, restore=RestoreConfig(enabled=False))),
        video_request(vid, reduction=ReductionConfig(method="pool", budget=0.5)),
    ]
    batched = engine.generate(mixed, max_new_tokens=6)
    logits = engine.score(mixed)
    for i, request in enumerate(mixed):
        assert engine.generate([request], max_new_tokens=6)[0].token_ids == batched[i].token_ids
        assert torch.allclose(engine.score([request])[0], logits[i], atol=1e-4)
    assert batched[1].stats.kept_tokens == 8


def test_qwen_positions_after_reduction():
    model, processor = tiny_qwen2_5_vl()
    engine = Engine(model, processor)
    for request in [image_request(QWEN_IMAGE), video_request(QWEN_VIDEO)]:
        prep = engine.adapter.prepare(request, 0)
        seq = engine.adapter.encode([prep])[0]
        v = prep.vision
        stock_pos, deltas = model.model.get_rope_index(
            prep.input_ids[None], v["mm_token_type_ids"], image_grid_thw=v.get("image_grid_thw"),
            video_grid_thw=v.get("video_grid_thw"), second_per_grid_ts=v.get("second_per_grid_ts"),
        )
        assert torch.equal(seq.positions, stock_pos[:, 0].T)
        # The stock model decodes the first new token at L + rope_delta on all three axes.
        stock_next = seq.length + int(deltas[0, 0])
        assert seq.next_position.tolist() == [stock_next] * 3
        if request.video is not None:  # the case where the per-axis maximum would be wrong
            assert seq.positions.max(dim=0).values.tolist() != [stock_next - 1] * 3
        span = seq.spans[0]
        plan = Plan.of(ReductionConfig(method="random", budget=4, restore=RestoreConfig(positions="median")))
        out = plan.apply(seq, [span.importance])
        n = 4 * span.frames
        assert out.length == seq.length - span.length + n
        assert out.next_position.tolist() == [stock_next] * 3
        # Text around the span keeps its full-sequence 3-D positions.
        assert torch.equal(out.positions[: span.start], seq.positions[: span.start])
        assert torch.equal(out.positions[span.start + n :], seq.positions[span.end :])
        # Kept tokens keep their own 3-D positions; merged ones take per-axis medians of their members.
        tokens = ImageTokens(features=seq.embeds[span.start : span.end].float(), importance=span.importance,
                             keys=span.keys, grid=span.grid)
        assignment = plan.assignment(tokens, n)
        kept = plan.method.select(tokens, round(0.5 * n), plan.options)
        orig = seq.positions[span.start : span.end]
        new = out.positions[span.start : span.start + n]
        for i in kept.tolist():
            assert torch.equal(new[assignment.slot[i]], orig[i])
        for s in range(n):
            members = orig[assignment.slot == s]
            lower_median = members.sort(dim=0).values[(members.shape[0] - 1) // 2]
            assert torch.equal(new[s], lower_median)


def test_bad_inputs_name_the_request(family):
    _, _, _, engine, img, vid = family
    with pytest.raises(ValueError, match="request 1 image 0"):
        engine.generate([image_request(img), Request(f"<s> {img} ?", [b"not an image"])], max_new_tokens=1)
    with pytest.raises(ValueError, match="request 0 video frame 1"):
        engine.generate([Request(f"<s> {vid} ?", video=[make_image(0, (56, 56)), b""])], max_new_tokens=1)
    with pytest.raises(ValueError, match="request 0: .*placeholder"):
        engine.generate([Request(f"<s> {vid} {vid} ?", video=frames(2))], max_new_tokens=1)
    with pytest.raises(ValueError, match="request 0: .*video placeholder"):
        engine.generate([Request(f"<s> {vid} ?", [make_image(0)], chat=False)], max_new_tokens=1)


class FakeVideoProcessor:
    """Stands in for transformers' video processor (which needs torchvision): builds the same tensors as the
    adapter's fallback, so the processor's own video path (kwargs, metadata, fps, placeholder expansion) is
    exercised and must agree with the fallback."""

    merge_size = 2
    temporal_patch_size = 2
    fps = None

    def __init__(self, name: str, adapter) -> None:
        self.name, self.adapter, self.calls = name, adapter, []

    def __call__(self, videos, **kwargs):
        from PIL import Image
        from transformers.image_processing_utils import BatchFeature

        self.calls.append(kwargs)
        frames_ = [Image.fromarray(f) for f in videos[0]]
        if self.name == "qwen2_5_vl":
            out = self.adapter._process_video_fallback(self.adapter.video_token, [], frames_, kwargs["video_metadata"][0].fps)
            data = {k: out[k] for k in ("pixel_values_videos", "video_grid_thw")}
            data["video_metadata"] = kwargs["video_metadata"]
        else:
            out = self.adapter._process_video_fallback(self.adapter.video_token, None, frames_)
            data = {"pixel_values_videos": out["pixel_values_videos"]}
        return BatchFeature(data, tensor_type=kwargs.get("return_tensors"))


def test_processor_video_path_agrees_with_fallback(family):
    name, _, processor, engine, img, vid = family
    request = Request(f"<s> {img} {vid} what is moving ?", [make_image(7, (56, 56))], video=frames(3, seed=30), fps=0.5)
    fallback = engine.adapter.prepare(request, 0)
    processor.video_processor = FakeVideoProcessor(name, engine.adapter)
    try:
        through = engine.adapter.prepare(request, 0)
        assert processor.video_processor.calls[0]["do_sample_frames"] is False
    finally:
        del processor.video_processor
    assert torch.equal(through.input_ids, fallback.input_ids)
    assert set(through.vision) == set(fallback.vision)
    for key, value in fallback.vision.items():
        assert torch.allclose(torch.as_tensor(through.vision[key]).float(), torch.as_tensor(value).float()), key


def test_segment_mean_query_attention_matches_per_segment_rows():
    from restore.models.base import cls_attention
    from restore.models.qwen2_5_vl import segment_mean_query_attention

    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 23, 4, 8, generator=gen)
    cu = torch.tensor([0, 5, 16, 23], dtype=torch.int32)
    got = segment_mean_query_attention(q, k, cu)
    want = torch.cat([cls_attention(q[None, a:b], k[None, a:b], query_index=None)[0] for a, b in zip(cu[:-1], cu[1:])])
    assert torch.allclose(got, want, atol=1e-6)
