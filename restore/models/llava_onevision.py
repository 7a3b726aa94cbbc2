"""LLaVA-OneVision (`LlavaOnevisionForConditionalGeneration`): SigLIP tower, MLP projector, Qwen2, 1-D RoPE.

Images: a request with one image goes through anyres (a base crop plus tiles,
unpadded, with an `image_newline` token after every row of tiles), packed by the
model's own `pack_image_features`; a request with several images gets one crop
per image followed by one newline token (the stock model's multi-image path).
Video: every frame is one crop, 2x2 bilinear-pooled (`apply_pooling`), frames
back to back, one newline token after the last frame.

Importance: SigLIP has no CLS token, so we take the attention of the mean query
(a pseudo-CLS) in the vision layer whose output the projector reads
(`vision_feature_layer`), per crop, from that layer's q and k. Keys are that
layer's keys. Both are carried into the token order of the features by running
them through the model's own packing as side channels: `pack_image_features`
with importance as a 1-dim feature and keys as a dk-dim feature (newline tokens
get importance 0 and zero keys: they carry no image content, so score-based
methods drop them first), and `apply_pooling` for video frames (pooled
importance is the bilinear mean of the patches' importance).

Spans and grids:
- single image (anyres): one span over all its tokens, newlines included;
  grid None (rows of tiles are unpadded and newline-separated, no exact grid).
- one image of several: the base crop's side x side tokens, grid (1, side, side);
  the newline after it stays a kept (text-like) token.
- video: the T x ceil(side/2) x ceil(side/2) pooled tokens, grid (T, H, W); the
  trailing newline stays a kept token.

Video tensors: when the processor has a video processor (it needs torchvision),
frames go through it; otherwise `pixel_values_videos` is built here from the
frames with the image processor's size, rescale and normalisation, and the
prompt is expanded and tokenised as the processor would.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from restore.models.base import (
    Adapter,
    OutputCapture,
    Prepared,
    cls_attention,
    split_runs,
    token_runs,
)
from restore.models.media import expand_and_tokenize, frames_to_array, load_frames
from restore.prompts import build_prompt
from restore.request import Request, load_image
from restore.sequence import SampleSeq, Span

NEWLINE_IMPORTANCE = 0.0


class LlavaOnevisionAdapter(Adapter):
    family = "llava_onevision"
    model_classes = ("LlavaOnevisionForConditionalGeneration",)

    @property
    def video_token(self) -> str:
        return getattr(self.processor, "video_token", "<video>")

    # --- requests
    def prepare(self, request: Request, index: int) -> Prepared:
        images = [load_image(im, f"request {index} image {j}") for j, im in enumerate(request.images)]
        frames = load_frames(request, index)
        prompt = build_prompt(
            self.processor, request, len(images), index, self.image_token, self.video_token, has_video=bool(frames)
        )
        # Nested: the images of one request are one sample (several images: no anyres tiles).
        nested = [images] if images else None
        if not frames:
            out = self.processor(text=prompt, images=nested, return_tensors="pt")
        elif getattr(self.processor, "video_processor", None) is not None:
            video = np.stack([np.asarray(f) for f in frames])  # (F, H, W, C) uint8
            out = self.processor(text=prompt, images=nested, videos=[video], do_sample_frames=False, return_tensors="pt")
        else:
            out = self._process_video_fallback(prompt, nested, frames)
        vision = {k: v for k, v in out.items() if k not in ("input_ids", "attention_mask")}
        return Prepared(input_ids=out["input_ids"][0], vision=vision, num_images=len(images))

    def _process_video_fallback(self, prompt, nested, frames):
        proc = self.processor
        ip = proc.image_processor
        out: dict[str, torch.Tensor] = {}
        image_repl: list[str] = []
        if nested:
            img = ip(nested, return_tensors="pt")
            out.update(img)
            image_repl = [proc.replace_image_token(img, i) for i in range(len(nested[0]))]
        side = self.model.config.vision_config.image_size
        size = ip.size
        height, width = (size["height"], size["width"]) if "height" in size else (side, side)
        arr = frames_to_array(
            frames, height, width, ip.resample, ip.rescale_factor if ip.do_rescale else None,
            ip.image_mean if ip.do_normalize else None, ip.image_std,
        )
        video = torch.from_numpy(arr)[None]  # (1, F, C, H, W)
        out["pixel_values_videos"] = video
        video_repl = [proc.replace_video_token({"pixel_values_videos": video}, 0)]
        out["input_ids"] = expand_and_tokenize(proc, prompt, image_repl, video_repl)
        return out

    # --- vision tower
    def _tower(self):
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower)

    def _vision_layer(self) -> int:
        vfl = self.model.config.vision_feature_layer
        vfl = vfl[-1] if isinstance(vfl, list | tuple) else vfl
        layers = self._tower().encoder.layers
        return len(layers) + vfl if vfl < 0 else max(vfl - 1, 0)

    def _scores(self, cq: OutputCapture, ck: OutputCapture, attn) -> tuple[torch.Tensor, torch.Tensor]:
        """Per crop: mean-query importance (C, S) and keys (C, S, dk) from the layer's own q and k projections."""
        bsz, seq, _ = ck.output.shape
        q = cq.output.view(bsz, seq, attn.num_heads, -1)
        k = ck.output.view(bsz, seq, attn.num_heads, -1)
        importance = cls_attention(q, k, query_index=None)
        keys = k.flatten(2).float()
        if self.model.config.vision_feature_select_strategy == "default":
            importance, keys = importance[:, 1:], keys[:, 1:]
        return importance, keys

    @torch.no_grad()
    def encode_images(self, crops: torch.Tensor, image_sizes: torch.Tensor, batch_num_images: list[int]):
        """Per image: packed features (N, d), importance (N,), keys (N, dk); one tower call for all crops."""
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        cfg = self.model.config
        inner = self.model.model
        attn = self._tower().encoder.layers[self._vision_layer()].self_attn
        with OutputCapture(attn.q_proj) as cq, OutputCapture(attn.k_proj) as ck:
            out = inner.get_image_features(
                pixel_values=crops.to(self.model.device, self.model.dtype),
                image_sizes=image_sizes,
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                vision_aspect_ratio=cfg.vision_aspect_ratio,
                batch_num_images=torch.tensor(batch_num_images),
                return_dict=True,
            )
        importance, keys = self._scores(cq, ck, attn)
        need_patching = [n == 1 for n in batch_num_images for _ in range(n)]
        counts = [
            image_size_to_num_patches(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size) if patch else 1
            for size, patch in zip(image_sizes, need_patching, strict=True)
        ]
        # Side channels through the model's own packing: the same unpadding, interpolation and newlines.
        imp_packed, _ = inner.pack_image_features(
            list(importance[..., None].split(counts)), image_sizes,
            image_newline=torch.tensor([NEWLINE_IMPORTANCE], device=importance.device),
            vision_aspect_ratio=cfg.vision_aspect_ratio,
        )
        keys_packed, _ = inner.pack_image_features(
            list(keys.split(counts)), image_sizes, image_newline=keys.new_zeros(keys.shape[-1]),
            vision_aspect_ratio=cfg.vision_aspect_ratio,
        )
        return list(out.pooler_output), [x[:, 0] for x in imp_packed], keys_packed, counts

    @torch.no_grad()
    def encode_videos(self, videos: list[torch.Tensor]):
        """Per video: pooled features with the trailing newline (N+1, d), importance (N,), keys (N, dk)."""
        cfg = self.model.config
        inner = self.model.model
        attn = self._tower().encoder.layers[self._vision_layer()].self_attn
        frames = torch.cat(videos)  # every frame of every video, one tower call
        with OutputCapture(attn.q_proj) as cq, OutputCapture(attn.k_proj) as ck:
            out = inner.get_video_features(
                pixel_values_videos=frames[None].to(self.model.device, self.model.dtype),
                vision_feature_layer=cfg.vision_feature_layer,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                return_dict=True,
            )
        importance, keys = self._scores(cq, ck, attn)
        imp = inner.apply_pooling(importance[..., None])[..., 0]  # (F, P)
        keys = inner.apply_pooling(keys)  # (F, P, dk)
        per_frame = imp.shape[1]
        feats = out.pooler_output[0, :-1].view(frames.shape[0], per_frame, -1)
        newline = inner.image_newline[None].to(feats.device, feats.dtype)
        counts = [v.shape[0] for v in videos]
        result = []
        for f, i, k in zip(feats.split(counts), imp.split(counts), keys.split(counts), strict=True):
            result.append((torch.cat([f.flatten(0, 1), newline]), i.flatten(), k.flatten(0, 1)))
        return result

    def encode(self, prepared: list[Prepared]) -> list[SampleSeq]:
        from transformers.models.llava_onevision.modeling_llava_onevision import image_size_to_num_patches

        cfg = self.model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        pooled = math.ceil(side / 2)
        # Images of all requests in one tower call: flatten each request's crops.
        crops, sizes, bni = [], [], []
        for p in prepared:
            if not p.num_images:
                continue
            pv, isz = p.vision["pixel_values"], p.vision["image_sizes"]
            for j in range(p.num_images):
                n = 1
                if p.num_images == 1:
                    n = image_size_to_num_patches(isz[j], cfg.image_grid_pinpoints, cfg.vision_config.image_size)
                crops.append(pv[j, :n] if pv.dim() == 5 else pv[j : j + n])
            sizes.append(isz)
            bni.append(p.num_images)
        feats, imps, keys, counts = [], [], [], []
        if crops:
            feats, imps, keys, counts = self.encode_images(torch.cat(crops), torch.cat(sizes), bni)
        videos = [p.vision["pixel_values_videos"][0] for p in prepared if "pixel_values_videos" in p.vision]
        video_out = self.encode_videos(videos) if videos else []

        samples, icur, vcur = [], 0, 0
        for i, p in enumerate(prepared):
            ids = p.input_ids.to(self.model.device)
            embeds = self.embed(ids)
            spans = []
            f = feats[icur : icur + p.num_images]
            bounds = split_runs(token_runs(p.input_ids, {cfg.image_token_id}), [x.shape[0] for x in f], f"request {i}")
            for j, (start, end) in enumerate(bounds):
                embeds[start:end] = f[j].to(embeds.dtype)
                imp, key = imps[icur + j].float().cpu(), keys[icur + j].float().cpu()
                if counts[icur + j] > 1:
                    spans.append(Span(start, end, grid=None, importance=imp, keys=key))
                else:  # one crop: side x side tokens, then the newline (left out of the span)
                    n = side * side
                    spans.append(Span(start, start + n, grid=(1, side, side), importance=imp[:n], keys=key[:n]))
            icur += p.num_images
            if "pixel_values_videos" in p.vision:
                vf, vimp, vkeys = video_out[vcur]
                vcur += 1
                bounds = split_runs(token_runs(p.input_ids, {cfg.video_token_id}), [vf.shape[0]], f"request {i} video")
                start, end = bounds[0]
                embeds[start:end] = vf.to(embeds.dtype)
                frames = p.vision["pixel_values_videos"].shape[1]
                spans.append(
                    Span(start, end - 1, grid=(frames, pooled, pooled), importance=vimp.float().cpu(), keys=vkeys.float().cpu())
                )
            spans.sort(key=lambda s: s.start)
            positions = torch.arange(ids.shape[0])[:, None]
            samples.append(SampleSeq.full(embeds, positions, spans))
        return samples
