"""LLaVA-1.5 (`LlavaForConditionalGeneration`): CLIP tower, MLP projector, Llama, 1-D RoPE.

Importance is the CLS query's attention in the vision layer whose output the
projector reads (vision_feature_layer, -2 for LLaVA-1.5), computed from that
layer's own q and k projections (captured, not recomputed) for the CLS row only;
keys are that layer's attention keys. Tower layers after the last one read are
not run.
Video is a list of frames given as images (the multi-image path); when the
frames' placeholder runs are adjacent they form one (T, H, W) span, so the
budget is per frame × T and temporal methods see the whole clip.
"""

from __future__ import annotations

import torch

from restore.models.base import (
    Adapter,
    OutputCapture,
    Prepared,
    cls_attention,
    first_layers,
    hidden_state_indices,
    split_runs,
    token_runs,
)
from restore.prompts import build_prompt
from restore.request import Request, load_image
from restore.sequence import SampleSeq, Span


class LlavaAdapter(Adapter):
    family = "llava"
    model_classes = ("LlavaForConditionalGeneration",)

    def prepare(self, request: Request, index: int) -> Prepared:
        sources = list(request.images) + list(request.video or [])
        images = [load_image(im, f"request {index} image {j}") for j, im in enumerate(sources)]
        prompt = build_prompt(self.processor, request, len(images), index, self.image_token)
        out = self.processor(text=prompt, images=images or None, return_tensors="pt")
        vision = {"pixel_values": out["pixel_values"]} if images else {}
        frames = len(request.video or [])
        return Prepared(input_ids=out["input_ids"][0], vision=vision, num_images=len(images), num_frames=frames)

    def _vision_layer(self) -> int:
        vfl = self.model.config.vision_feature_layer
        vfl = vfl[-1] if isinstance(vfl, list | tuple) else vfl
        layers = self._tower().encoder.layers
        return len(layers) + vfl if vfl < 0 else max(vfl - 1, 0)

    def vision_layers_run(self) -> int:
        depth = len(self._tower().encoder.layers)
        return max(*hidden_state_indices(self.model.config.vision_feature_layer, depth), self._vision_layer() + 1)

    def _tower(self):
        tower = self.model.model.vision_tower
        return getattr(tower, "vision_model", tower)

    def _grid(self) -> tuple[int, int, int] | None:
        if self.model.config.vision_feature_select_strategy != "default":
            return None
        vc = self.model.config.vision_config
        side = vc.image_size // vc.patch_size
        return (1, side, side)

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor):
        """Per image: projected features (N, d), CLS importance (N,), keys (N, dk)."""
        cfg = self.model.config
        encoder = self._tower().encoder
        attn = encoder.layers[self._vision_layer()].self_attn
        read = hidden_state_indices(cfg.vision_feature_layer, len(encoder.layers))
        with OutputCapture(attn.q_proj) as cq, OutputCapture(attn.k_proj) as ck, first_layers(
            self.model.model.vision_tower, encoder, self.vision_layers_run()
        ):
            out = self.model.model.get_image_features(
                pixel_values=pixel_values.to(self.model.device, self.model.dtype),
                vision_feature_layer=read[0] if isinstance(cfg.vision_feature_layer, int) else read,
                vision_feature_select_strategy=cfg.vision_feature_select_strategy,
                return_dict=True,
            )
        bsz, seq, _ = ck.output.shape
        q = cq.output[:, :1].view(bsz, 1, attn.num_heads, -1)
        k = ck.output.view(bsz, seq, attn.num_heads, -1)
        importance = cls_attention(q, k, query_index=0)
        keys = k.flatten(2)
        if cfg.vision_feature_select_strategy == "default":
            importance, keys = importance[:, 1:], keys[:, 1:]
        return list(out.pooler_output), list(importance), list(keys)

    def encode(self, prepared: list[Prepared]) -> list[SampleSeq]:
        pixels = [p.vision["pixel_values"] for p in prepared if p.num_images]
        feats, imps, keys = self.encode_images(torch.cat(pixels)) if pixels else ([], [], [])
        image_id = self.model.config.image_token_id
        samples, cursor = [], 0
        for i, p in enumerate(prepared):
            ids = p.input_ids.to(self.model.device)
            embeds = self.embed(ids)
            f = feats[cursor : cursor + p.num_images]
            runs = token_runs(ids.cpu(), {image_id})
            bounds = split_runs(runs, [x.shape[0] for x in f], f"request {i}")
            spans = []
            for j, (start, end) in enumerate(bounds):
                embeds[start:end] = f[j].to(embeds.dtype)
                spans.append(
                    Span(start, end, grid=self._grid(), importance=imps[cursor + j].float().cpu(), keys=keys[cursor + j].float().cpu())
                )
            if p.num_frames > 1:
                spans = spans[: len(spans) - p.num_frames] + _as_clip(spans[len(spans) - p.num_frames :])
            cursor += p.num_images
            positions = torch.arange(ids.shape[0])[:, None]
            samples.append(SampleSeq.full(embeds, positions, spans))
        return samples


def _as_clip(frames: list[Span]) -> list[Span]:
    """One (T, H, W) span over adjacent frame spans; frames with text between them stay separate."""
    adjacent = all(a.end == b.start for a, b in zip(frames, frames[1:]))
    if not adjacent or frames[0].grid is None:
        return frames
    _, h, w = frames[0].grid
    return [
        Span(
            frames[0].start, frames[-1].end, grid=(len(frames), h, w),
            importance=torch.cat([f.importance for f in frames]), keys=torch.cat([f.keys for f in frames]),
        )
    ]
