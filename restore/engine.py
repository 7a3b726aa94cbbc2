"""`Engine`: batched captioning / VQA with visual token reduction and RESTORE.

One call of `generate` runs the whole batch together: the vision tower on every
image at once, reduction per sample (each request may carry its own method and
budget), one left-padded prefill through the stock text model, and a batched
decode loop (`restore.runtime.scheduler`, which also serves requests that join
and leave a running batch). Per-sample layouts, positions and the calibration bias reach the
stock attention through `restore.runtime` (`layout`, `stages`, `attention`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, DynamicCache

from restore.config import GenerationConfig, ModelConfig, ReductionConfig
from restore.flops import prefill_flops, text_shapes
from restore.hub import resolve_model_path
from restore.models import adapter_for
from restore.plan import Plan, fit_layers, validate
from restore.prompts import media_prompt
from restore.request import Request, Result
from restore.runtime.attention import ForwardContext, active, install
from restore.runtime.layout import pad_batch
from restore.runtime.scheduler import Scheduler
from restore.runtime.stages import Stages
from restore.sequence import SampleSeq

logger = logging.getLogger(__name__)


class PromptTooLong(ValueError):
    """A prompt over the model's context (with the tokens it may generate) or over a caller's token limit."""


def resolve_dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    """A torch dtype from a name ('auto': bfloat16 on CUDA, float32 elsewhere) or a dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    return ModelConfig(device=device, dtype=dtype or "auto").torch_dtype()


@dataclass
class _Prefill:
    logits: torch.Tensor
    cache: DynamicCache
    attention_mask: torch.Tensor
    seqs: list[SampleSeq]
    ctx: ForwardContext | None
    visual: list[int]
    timings: dict[str, float]
    layer_tokens: list[list[int]]  # per sample: the tokens each decoder layer ran on
    full_tokens: list[int]  # per sample: the sequence length with every visual token
    layouts: list  # the Layout of each stage, the first being the batch as prefilled


class Engine:
    def __init__(self, model, processor, reduction: ReductionConfig | None = None) -> None:
        self.model = model.eval()
        self.processor = processor
        self.adapter = adapter_for(model, processor)
        self.reduction = validate(reduction or ReductionConfig())
        install(model, self.adapter.text_model)
        self.rope = self.adapter.rope()
        self.shapes = text_shapes(model)

    @classmethod
    def from_pretrained(
        cls,
        path_or_id: str = "default",
        reduction: ReductionConfig | None = None,
        device: str = "cpu",
        dtype: str | torch.dtype | None = "auto",
    ) -> Engine:
        """Load a model: `device` may be 'auto' (cuda when available); `dtype` 'auto' (ModelConfig)."""
        device = ModelConfig(path=path_or_id, device=device).resolved_device()
        torch_dtype = resolve_dtype(dtype, device)
        if path_or_id.startswith("random:"):
            from restore.archs import random_llava

            model, processor = random_llava(path_or_id.removeprefix("random:"), dtype=torch_dtype)
            return cls(model.to(device), processor, reduction=reduction)
        local = resolve_model_path(path_or_id)
        processor = AutoProcessor.from_pretrained(local)
        model = AutoModelForImageTextToText.from_pretrained(local, dtype=torch_dtype).to(device)
        return cls(model, processor, reduction=reduction)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def media_prompt(self, text: str, count: int) -> str:
        """A user's prompt for `count` images made ready for this model (`restore.prompts.media_prompt`)."""
        return media_prompt(self.processor, self.adapter.image_token, text, count)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def generate(
        self,
        requests: Sequence[Request],
        max_new_tokens: int | None = None,
        generation: GenerationConfig | None = None,
        on_token: Callable[[int, int], None] | None = None,
        **options,
    ) -> list[Result]:
        """Answer every request; `options` are GenerationConfig fields overriding `generation`.

        The requests are submitted to a fresh `Scheduler` without limits, so they are encoded and prefilled
        as one batch and decode together, each leaving the batch as soon as it is done.

        `on_token(i, token_id)` is called for each token request i generates, as it is chosen (streaming);
        the end-of-sequence token is not passed.
        """
        if max_new_tokens is not None:
            options["max_new_tokens"] = max_new_tokens
        base = generation.model_dump() if generation is not None else {}
        generation = GenerationConfig(**{**base, **options})
        if not requests:
            return []
        scheduler = Scheduler(self, prefill_group=len(requests))
        handles = []
        for i, request in enumerate(requests):
            cb = None if on_token is None else (lambda tok, _text, i=i: on_token(i, tok))
            handles.append(scheduler.submit(request, generation, cb, index=i))
        scheduler.run_until_idle()
        return [h.result() for h in handles]

    def scheduler(self, max_batch_tokens: int | None = None, max_running: int | None = None,
                  prefill_group: int = 8) -> Scheduler:
        """A continuous-batching scheduler over this engine (`restore.runtime.scheduler`)."""
        return Scheduler(self, max_batch_tokens=max_batch_tokens, max_running=max_running, prefill_group=prefill_group)

    def score(self, requests: Sequence[Request]) -> torch.Tensor:
        """(B, V) float logits of the next token after each prompt, with each request's reduction."""
        if not requests:
            return torch.empty(0)
        plans = [self.plan(r.reduction or self.reduction) for r in requests]
        prepared = self.prepare(requests)
        with torch.inference_mode():
            pre = self._prefill(prepared, plans)
        return pre.logits

    @property
    def context_length(self) -> int | None:
        """Positions the text model was built for (`max_position_embeddings`); None when unknown."""
        return getattr(self.adapter.text_model.config, "max_position_embeddings", None)

    def prepare(self, requests: Sequence[Request], max_new_tokens: int = 0) -> list:
        """Each request through the processor, refused with a ValueError naming it when its text is not valid
        Unicode, when it is empty (no text token and no media), or when its prompt (every visual token
        counted: positions are never compacted under RESTORE) plus `max_new_tokens` exceeds the context."""
        return [self.prepare_one(r, i, max_new_tokens) for i, r in enumerate(requests)]

    def prepare_one(self, request: Request, index: int, max_new_tokens: int = 0, max_prompt_tokens: int | None = None):
        """`prepare` for one request, named `index` in errors; `max_prompt_tokens` is a caller's own bound on
        the prompt (visual tokens included), below the model's context."""
        try:
            request.prompt.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"request {index}: the prompt is not valid Unicode text ({err.reason} at character {err.start}); "
                "send UTF-8 text"
            ) from None
        p = self.adapter.prepare(request, index)
        length = int(p.input_ids.numel())
        if length == 0:
            if request.prompt.strip():
                raise ValueError(f"request {index}: no word of the prompt is in this model's vocabulary and there is "
                                 "no image or video; rephrase it")
            raise ValueError(f"request {index}: the prompt is empty and there is no image or video; give some text")
        if max_prompt_tokens is not None and length > max_prompt_tokens:
            raise PromptTooLong(f"request {index}: the prompt has {length} tokens (visual tokens included), more than "
                                f"the limit of {max_prompt_tokens}")
        limit = self.context_length
        if limit is not None and length + max_new_tokens > limit:
            raise PromptTooLong(
                f"request {index}: {length} prompt tokens (visual tokens included) + {max_new_tokens} new tokens "
                f"exceed this model's context of {limit} tokens; shorten the prompt or ask for fewer tokens"
            )
        return p

    def plan(self, config: ReductionConfig) -> Plan:
        """The plan this model runs for `config`: in-LLM default layers placed at their relative depth."""
        return Plan.of(fit_layers(config, len(self.adapter.text_model.layers)))

    def check_plan(self, plan: Plan) -> Plan:
        """`plan` when its in-LLM layers fit this model; else a ValueError naming the field to change."""
        depth = len(self.adapter.text_model.layers)
        if plan.reduces and plan.in_llm and plan.layers and plan.layers[-1] >= depth:
            raise ValueError(
                f"reduction layer {plan.layers[-1]} is beyond this model's {depth} decoder layers; "
                f"set ReductionConfig.layer (or the method's layers option) below {depth}"
            )
        return plan

    def _encode(self, prepared, plans: list[Plan]) -> tuple[list[SampleSeq], list[SampleSeq], dict[str, float]]:
        """The vision tower on a group of prepared requests, then each one's pre-LLM reduction: the full
        sequences, the sequences the LLM will take, and the group's timings."""
        self._sync()
        t0 = time.perf_counter()
        seqs = self.adapter.encode(prepared)
        self._sync()
        t_encode = time.perf_counter()
        reduced = []
        for seq, plan in zip(seqs, plans, strict=True):
            if plan.reduces and not plan.in_llm:
                seq = plan.apply(seq, [s.importance for s in seq.spans])
            reduced.append(seq)
        t_reduce = time.perf_counter()
        return seqs, reduced, {"encode_ms": (t_encode - t0) * 1e3, "reduce_ms": (t_reduce - t_encode) * 1e3}

    def _prefill(self, prepared, plans: list[Plan]) -> _Prefill:
        seqs, reduced, timings = self._encode(prepared, plans)
        return self._prefill_reduced(seqs, reduced, plans, timings)

    def _prefill_reduced(self, seqs: list[SampleSeq], reduced: list[SampleSeq], plans: list[Plan],
                         timings: dict[str, float]) -> _Prefill:
        """One left-padded LLM prefill of encoded requests (`seqs` full, `reduced` as the LLM takes them)."""
        t_reduce = time.perf_counter()
        first_here = [r is not s for r, s in zip(reduced, seqs, strict=True)]
        for plan in plans:
            self.check_plan(plan)
        embeds, layout = pad_batch(reduced, 0, first_here, self.device)
        stages = Stages(self.adapter, plans, reduced, layout)
        depth = len(self.adapter.text_model.layers)
        ctx = ForwardContext(self.rope, layout, stages) if any(p.reduces for p in plans) else None
        attention_mask = layout.valid.long()
        cache = DynamicCache(config=self.adapter.text_model.config)
        with active(ctx):
            out = self.adapter.text_model(
                inputs_embeds=embeds,
                attention_mask=attention_mask,
                position_ids=self.adapter.position_ids(layout.positions),
                past_key_values=cache,
                use_cache=True,
            )
            logits = self.adapter.lm_head(out.last_hidden_state[:, -1]).float()
        self._sync()
        t_prefill = time.perf_counter()
        timings = {**timings, "prefill_ms": (t_prefill - t_reduce) * 1e3}
        layer_tokens = stages.layer_tokens([seq.length for seq in reduced], depth)
        full = [seq.length for seq in seqs]
        layouts = ctx.layouts if ctx is not None else [layout]
        visual = [sum(s.length for s in seq.spans) for seq in seqs]
        return _Prefill(logits, cache, attention_mask, stages.seqs, ctx, visual, timings, layer_tokens, full, layouts)

    def _full_over_run(self, full: int, layer_tokens: list[int]) -> float:
        """Decoder FLOPs of a prefill with every visual token over those of the prefill as run: what the
        prefill would have cost unreduced, modelled by FLOPs; exactly 1 when nothing was reduced."""
        if all(n == full for n in layer_tokens):
            return 1.0
        return prefill_flops([full] * len(layer_tokens), self.shapes) / prefill_flops(layer_tokens, self.shapes)

    def text_of(self, ids: list[int], stop: list[str]) -> str:
        """Decoded text of generated ids, cut before the first stop string."""
        text = self.adapter.tokenizer.decode(ids, skip_special_tokens=True)
        for s in stop:
            cut = text.find(s)
            if cut >= 0:
                text = text[:cut]
        return text.strip()
