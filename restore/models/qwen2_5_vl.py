"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`): windowed ViT, 2x2 patch merger, Qwen2 with M-RoPE.

Images and video. A video is `Request.video` (frames) with `Request.fps`; frames
are grouped in pairs (temporal_patch_size) by the vision tower, so a span of T
frames holds T' = ceil(T/2) x H/2 x W/2 merged tokens, in that row-major order.

Positions are the stock model's own 3-D (t, h, w) M-RoPE positions from
`get_rope_index` (with `mm_token_type_ids` and, for video, `second_per_grid_ts`
= temporal_patch_size / fps so the temporal axis is spaced as the stock model
spaces it). Decoding continues where the stock model continues: one past the
largest position on any axis (its `rope_deltas`), on all three axes — not the
per-axis maximum, which differs when a video's temporal positions run past the
text after it.

Importance: the tower has no CLS token. We take the attention of the mean query
(a pseudo-CLS) in the last full-attention block (`fullatt_block_indexes[-1]`),
computed from that block's rotated q and k, per attention segment (one frame
pair of one image/video, exactly the segments that block attends within), on the
pre-merge patches; then average it over each 2x2 merge group, so every merged
token the LLM sees gets the mean attention of the four patches it is made of
(averaging, not summing, keeps a span's scores on one scale whatever its size; a
method only ranks them). Keys: the same block's pre-RoPE keys, averaged over each
merge group (a position-free similarity feature).

Video tensors: transformers' video processors need torchvision. When the
processor has a video processor, frames go through it (with a `VideoMetadata`
giving the fps, which otherwise silently defaults to 24). Without one (e.g. no
torchvision), `pixel_values_videos` / `video_grid_thw` are built here from the
frames with the image processor's settings (smart resize of the first frame's
size, rescale, normalise, patchify exactly as the video processor lays patches
out, last frame repeated up to a multiple of temporal_patch_size), and the
prompt is expanded and tokenised as the processor would.
"""

from __future__ import annotations

import numpy as np
import torch

from restore.models.base import Adapter, Prepared, split_runs, token_runs
from restore.models.media import expand_and_tokenize, frames_to_array, load_frames
from restore.prompts import build_prompt
from restore.rectify.calibration import RopeSpec
from restore.request import Request, load_image
from restore.sequence import SampleSeq, Span

DEFAULT_FPS = 2.0  # qwen-vl-utils' default sampling rate, used when a request gives no fps


class _AttentionCall:
    """Capture the hidden states and keyword arguments entering one attention module."""

    def __init__(self, module) -> None:
        self.module = module
        self.inputs: torch.Tensor | None = None
        self.kwargs: dict = {}

    def __enter__(self):
        def hook(mod, args, kwargs):
            self.inputs = args[0] if args else kwargs["hidden_states"]
            self.kwargs = kwargs

        self._handle = self.module.register_forward_pre_hook(hook, with_kwargs=True)
        return self

    def __exit__(self, *exc):
        self._handle.remove()


def segment_mean_query_attention(q: torch.Tensor, k: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """(S,) head-averaged attention of each segment's mean query on that segment's keys; q, k (S, H, dh).

    Segments are packed back to back (cu_seqlens), as the vision tower attends; one row per segment,
    never an S x S matrix, and no loop over segments.
    """
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long().to(q.device)
    seg = torch.repeat_interleave(torch.arange(lengths.numel(), device=q.device), lengths)
    q, k = q.float(), k.float()
    heads = q.shape[1]
    qmean = torch.zeros(lengths.numel(), heads, q.shape[2], device=q.device).index_add_(0, seg, q)
    qmean = qmean / lengths.clamp(min=1)[:, None, None].float()
    logits = (qmean[seg] * k).sum(-1) * q.shape[-1] ** -0.5  # (S, H)
    idx = seg[:, None].expand(-1, heads)
    peak = torch.full((lengths.numel(), heads), float("-inf"), device=q.device)
    peak = peak.scatter_reduce(0, idx, logits, reduce="amax", include_self=True)
    e = torch.exp(logits - peak[seg])
    den = torch.zeros(lengths.numel(), heads, device=q.device).index_add_(0, seg, e)
    return (e / den[seg]).mean(dim=-1)


class Qwen2_5_VLAdapter(Adapter):
    family = "qwen2_5_vl"
    model_classes = ("Qwen2_5_VLForConditionalGeneration",)

    @property
    def image_token(self) -> str:
        return getattr(self.processor, "image_token", "<|image_pad|>")

    @property
    def video_token(self) -> str:
        return getattr(self.processor, "video_token", "<|video_pad|>")

    def rope(self) -> RopeSpec:
        rotary = self.text_model.rotary_emb
        return RopeSpec.sectioned(rotary.inv_freq, list(rotary.mrope_section))

    def position_ids(self, positions: torch.Tensor) -> torch.Tensor:
        """(3, B, L): the text model's M-RoPE position_ids from (B, L, 3) positions."""
        return positions.permute(2, 0, 1)

    # --- requests
    def prepare(self, request: Request, index: int) -> Prepared:
        images = [load_image(im, f"request {index} image {j}") for j, im in enumerate(request.images)]
        frames = load_frames(request, index)
        prompt = build_prompt(
            self.processor, request, len(images), index, self.image_token, self.video_token, has_video=bool(frames)
        )
        if not frames:
            out = self.processor(text=prompt, images=images or None, return_tensors="pt")
        elif getattr(self.processor, "video_processor", None) is not None:
            out = self._process_with_video_processor(prompt, images, frames, request.fps)
        else:
            out = self._process_video_fallback(prompt, images, frames, request.fps)
        vision = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
        return Prepared(input_ids=out["input_ids"][0], vision=vision, num_images=len(images))

    def _fps(self, fps: float | None) -> float:
        if fps is not None:
            if fps <= 0:
                raise ValueError(f"fps must be > 0, got {fps}")
            return float(fps)
        vp = getattr(self.processor, "video_processor", None)
        return float(getattr(vp, "fps", None) or DEFAULT_FPS)

    def _process_with_video_processor(self, prompt, images, frames, fps):
        from transformers.video_utils import VideoMetadata

        fps = self._fps(fps)
        width, height = frames[0].size
        meta = VideoMetadata(
            total_num_frames=len(frames), fps=fps, width=width, height=height, duration=len(frames) / fps,
            frames_indices=list(range(len(frames))),
        )
        video = np.stack([np.asarray(f) for f in frames])  # (F, H, W, C) uint8: frames as one video
        return self.processor(
            text=prompt, images=images or None, videos=[video], video_metadata=[meta], do_sample_frames=False,
            return_tensors="pt",
        )

    def _process_video_fallback(self, prompt, images, frames, fps):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        proc = self.processor
        ip = proc.image_processor
        out: dict[str, torch.Tensor] = {}
        image_repl: list[str] = []
        if images:
            img = ip(images, return_tensors="pt")
            out.update(img)
            image_repl = [proc.replace_image_token(img, i) for i in range(len(images))]
        patch, merge, tps = ip.patch_size, ip.merge_size, ip.temporal_patch_size
        width, height = frames[0].size
        rh, rw = smart_resize(
            height, width, factor=patch * merge, min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"]
        )
        arr = frames_to_array(
            frames, rh, rw, ip.resample, ip.rescale_factor if ip.do_rescale else None,
            ip.image_mean if ip.do_normalize else None, ip.image_std,
        )
        video = torch.from_numpy(arr)
        if pad := -video.shape[0] % tps:
            video = torch.cat([video, video[-1:].expand(pad, -1, -1, -1)])
        nf, ch = video.shape[:2]
        gt, gh, gw = nf // tps, rh // patch, rw // patch
        patches = video.view(gt, tps, ch, gh // merge, merge, patch, gw // merge, merge, patch)
        patches = patches.permute(0, 3, 6, 4, 7, 2, 1, 5, 8).reshape(gt * gh * gw, ch * tps * patch * patch)
        out["pixel_values_videos"] = patches.contiguous()
        out["video_grid_thw"] = torch.tensor([[gt, gh, gw]])
        out["second_per_grid_ts"] = torch.tensor([tps / self._fps(fps)])
        video_repl = [self.video_token * (gt * gh * gw // merge**2)]
        ids = expand_and_tokenize(proc, prompt, image_repl, video_repl)
        out["input_ids"] = ids
        out["mm_token_type_ids"] = torch.tensor(proc.create_mm_token_type_ids(ids.tolist()))
        return out

    # --- vision tower
    def _score_block(self) -> int:
        visual = self.model.model.visual
        full = list(visual.fullatt_block_indexes or [])
        return max(full) if full else len(visual.blocks) - 1

    @torch.no_grad()
    def encode_vision(self, pixels: torch.Tensor, grid: torch.Tensor, video: bool):
        """Per image/video: merged features (N, d), importance (N,), keys (N, dk); one tower call for all."""
        from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision
        from transformers.vision_utils import get_vision_window_index

        inner = self.model.model
        visual = inner.visual
        attn = visual.blocks[self._score_block()].attn
        grid = grid.to(self.model.device)
        pixels = pixels.to(self.model.device)
        get = inner.get_video_features if video else inner.get_image_features
        with _AttentionCall(attn) as cap:
            feats = get(pixels, grid, return_dict=True).pooler_output
        x = cap.inputs
        seq = x.shape[0]
        qkv = attn.qkv(x).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3)
        q, k = qkv[0], qkv[1]
        cos, sin = cap.kwargs["position_embeddings"]
        q_rot, k_rot = apply_rotary_pos_emb_vision(q, k, cos, sin)
        imp = segment_mean_query_attention(q_rot, k_rot, cap.kwargs["cu_seqlens"])
        # Inside the blocks, merge groups (4 consecutive patches) are in window order: undo it.
        unit = visual.spatial_merge_unit
        window_index, _ = get_vision_window_index(grid, visual.spatial_merge_size, visual.window_size, visual.patch_size)
        reverse = torch.argsort(window_index.to(x.device))
        imp = imp.view(-1, unit).mean(dim=1)[reverse]
        keys = k.float().reshape(seq // unit, unit, -1).mean(dim=1)[reverse]
        sizes = (grid.prod(-1) // unit).tolist()
        return list(feats), list(imp.split(sizes)), list(keys.split(sizes))

    def encode(self, prepared: list[Prepared]) -> list[SampleSeq]:
        merge = self.model.config.vision_config.spatial_merge_size
        out = {}
        for kind, pix_key, grid_key in (
            ("image", "pixel_values", "image_grid_thw"),
            ("video", "pixel_values_videos", "video_grid_thw"),
        ):
            with_kind = [p for p in prepared if grid_key in p.vision]
            if with_kind:
                pixels = torch.cat([p.vision[pix_key] for p in with_kind])
                grids = torch.cat([p.vision[grid_key] for p in with_kind])
                out[kind] = self.encode_vision(pixels, grids, video=kind == "video")
            else:
                out[kind] = ([], [], [])
        cfg = self.model.config
        cursor = {"image": 0, "video": 0}
        samples = []
        for i, p in enumerate(prepared):
            ids = p.input_ids.to(self.model.device)
            embeds = self.embed(ids)
            spans = []
            for kind, token_id, grid_key in (
                ("image", cfg.image_token_id, "image_grid_thw"),
                ("video", cfg.video_token_id, "video_grid_thw"),
            ):
                grids = p.vision.get(grid_key)
                count = 0 if grids is None else grids.shape[0]
                feats, imps, keys = (x[cursor[kind] : cursor[kind] + count] for x in out[kind])
                cursor[kind] += count
                bounds = split_runs(
                    token_runs(p.input_ids, {token_id}), [f.shape[0] for f in feats], f"request {i} ({kind})"
                )
                for j, (start, end) in enumerate(bounds):
                    embeds[start:end] = feats[j].to(embeds.dtype)
                    t, h, w = (int(v) for v in grids[j])
                    spans.append(
                        Span(
                            start, end, grid=(t, h // merge, w // merge),
                            importance=imps[j].float().cpu(), keys=keys[j].float().cpu(),
                        )
                    )
            spans.sort(key=lambda s: s.start)
            positions = self._positions(p)
            samples.append(SampleSeq.full(embeds, positions, spans))
        return samples

    def _positions(self, p: Prepared) -> torch.Tensor:
        """(L, 3) the stock model's M-RoPE positions of one unpadded sample, on CPU."""
        v = p.vision
        ids = p.input_ids[None]
        mm = v.get("mm_token_type_ids")
        if mm is None:
            mm = torch.tensor(self.processor.create_mm_token_type_ids(ids.tolist()))
        sec = v.get("second_per_grid_ts")
        if sec is not None:
            sec = torch.as_tensor(sec, dtype=torch.float32)
        pos, _ = self.model.model.get_rope_index(
            ids, mm.to(ids.device), image_grid_thw=v.get("image_grid_thw"), video_grid_thw=v.get("video_grid_thw"),
            second_per_grid_ts=sec,
        )
        return pos[:, 0].T.contiguous().cpu()
