"""Continuous batching over an `Engine` (DESIGN §7: decode is scheduled per step).

Requests are submitted one by one and wait in a queue. Each `step()`:

1. retires cancelled requests (a running one leaves the batch at once and frees its cache rows);
2. admits waiting requests: a group of up to `prefill_group` is run through the vision tower and its
   pre-LLM reduction (so its exact cache size is known), then, in arrival order, requests are admitted while
   their cache cost fits `max_batch_tokens` and the running count stays within `max_running`; the admitted
   ones are prefilled together (any mix of methods, budgets, RESTORE settings, image counts, video, in-LLM
   and multi-stage methods) and join the running batch;
3. chooses one token for every running request in one batched pass (one transfer of the chosen ids to the
   host per step), hands each request its token and text delta, and retires finished requests;
4. runs one decode forward for the requests still running.

**Cache cost** of a request, in tokens: the keys its KV cache holds after reduction, averaged over the
decoder layers and rounded up (an in-LLM method's layers before K hold every token, the later ones the
reduced sequence: the mean is its KV memory in units of one token at every layer), plus `max_new_tokens`,
what it may still add. The cost is reserved at admission and released when the request leaves, so a running
request never has to be preempted. `max_batch_tokens` bounds the sum over running requests; the left
padding a batch of unequal lengths carries is not counted (a paged cache would remove it).

Each request's keys, positions, sizes and calibration bias are exactly those it has alone (rows are
left-padded, padded keys are masked), so its greedy tokens and logits equal running it alone.

`submit` and `Handle.cancel` may be called from other threads while one thread drives `step()`
(`run_until_idle`, `start`, or `Handle.result`, which drives the scheduler itself when no loop runs).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from restore.config import GenerationConfig
from restore.plan import Plan
from restore.request import Request, Result, Stats
from restore.runtime.attention import ForwardContext, active
from restore.runtime.batch import DecodeBatch
from restore.runtime.sampling import Detokenizer, Sampler, StopWatch
from restore.sequence import SampleSeq

logger = logging.getLogger(__name__)

TokenCallback = Callable[[int, str], None]


class RequestCancelled(Exception):
    """`Handle.result()` of a request cancelled before it ran."""


@dataclass(eq=False)
class _Work:
    """One submitted request through its life in the scheduler."""

    id: int
    request: Request
    generation: GenerationConfig
    plan: Plan
    prepared: object
    on_token: TokenCallback | None
    keep_logits: bool
    handle: Handle | None = None
    # after encoding
    seq: SampleSeq | None = None  # full sequence
    reduced: SampleSeq | None = None  # as the LLM takes it
    timings: dict[str, float] = field(default_factory=dict)
    layer_tokens: list[int] = field(default_factory=list)
    cost: int = 0
    # after prefill
    info: dict = field(default_factory=dict)  # Stats fields read from its sequences
    batch_size: int = 0
    full_ms: float = 0.0
    joined: float = 0.0
    # decoding
    tokens: list[int] = field(default_factory=list)
    logits: list[torch.Tensor] = field(default_factory=list)
    detok: Detokenizer | None = None
    stops: StopWatch | None = None
    generator: torch.Generator | None = None
    error: BaseException | None = None  # raised by its on_token callback


def _seq_stats(full: SampleSeq, final: SampleSeq) -> dict:
    """Stats fields of a request from its full sequence and the one its last stage kept."""
    sizes = torch.cat([final.sizes[s.start : s.end] for s in final.spans]) if final.spans else torch.zeros(0)
    return {
        "visual_tokens": sum(s.length for s in full.spans),
        "kept_tokens": int(sizes.numel()),
        "size_min": float(sizes.min()) if sizes.numel() else 0.0,
        "size_mean": float(sizes.mean()) if sizes.numel() else 0.0,
        "size_max": float(sizes.max()) if sizes.numel() else 0.0,
        "prompt_tokens": final.length,
    }


class Handle:
    """A submitted request: `done()`, `cancel()`, `result()`, `add_done_callback()`."""

    def __init__(self, scheduler: Scheduler, work: _Work) -> None:
        self._scheduler = scheduler
        self._work = work
        self._event = threading.Event()
        self._result: Result | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Handle], None]] = []
        self._callbacks_lock = threading.Lock()
        self.cancelled = False

    @property
    def id(self) -> int:
        return self._work.id

    @property
    def logits(self) -> list[torch.Tensor]:
        """With `keep_logits`: the (V,) float logits each generated token was chosen from, on the CPU."""
        return self._work.logits

    def done(self) -> bool:
        return self._event.is_set()

    def cancel(self) -> None:
        """Stop the request: it leaves the running batch (or the queue) at the scheduler's next step; its
        result holds what it generated until then (`RequestCancelled` when it never ran)."""
        if not self.done():
            self.cancelled = True
            self._scheduler._wake()

    def result(self, timeout: float | None = None) -> Result:
        """The request's Result, waiting for it (and driving the scheduler when no loop thread runs it);
        raises the error that failed it, or TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._event.is_set():
            if self._scheduler._thread is None:
                self._scheduler.step()
                if deadline is not None and time.monotonic() > deadline and not self._event.is_set():
                    raise TimeoutError(f"request {self.id} not done after {timeout} s")
            else:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not self._event.wait(left):
                    raise TimeoutError(f"request {self.id} not done after {timeout} s")
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result

    def add_done_callback(self, fn: Callable[[Handle], None]) -> None:
        """Call `fn(handle)` once the request is done (at once if it already is), on the thread that finished
        it: a waiter needs no thread of its own (an asyncio server hands the result to its loop from here)."""
        with self._callbacks_lock:
            if not self._event.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self, result: Result | None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        with self._callbacks_lock:
            self._event.set()
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn(self)
            except Exception:  # a waiter's failure must not stop the scheduler
                logger.exception("done callback of request %d failed", self.id)


class Scheduler:
    """Continuous batching of one engine's requests; see the module docstring.

    `max_batch_tokens`: cache cost (see above) of all running requests together, None for no bound;
    `max_running`: requests decoding at once, None for no bound; `prefill_group`: requests encoded and
    prefilled together at most.
    """

    def __init__(self, engine, max_batch_tokens: int | None = None, max_running: int | None = None,
                 prefill_group: int = 8) -> None:
        if max_batch_tokens is not None and max_batch_tokens < 1:
            raise ValueError(f"max_batch_tokens must be >= 1 or None, got {max_batch_tokens}")
        if max_running is not None and max_running < 1:
            raise ValueError(f"max_running must be >= 1 or None, got {max_running}")
        if prefill_group < 1:
            raise ValueError(f"prefill_group must be >= 1, got {prefill_group}")
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.max_running = max_running
        self.prefill_group = prefill_group
        self.depth = len(engine.adapter.text_model.layers)
        self.eos = engine.adapter.eos_token_ids
        self._waiting: deque[_Work] = deque()  # submitted, not yet encoded
        self._ready: deque[_Work] = deque()  # encoded, waiting for room
        self._rows: list[_Work] = []  # the running batch, in row order
        self._batch: DecodeBatch | None = None
        self._sampler: Sampler | None = None
        self._lock = threading.Lock()  # guards _waiting and _next_id
        self._step_lock = threading.Lock()
        self._wakeup = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._next_id = 0

    # --- the caller's side
    def submit(self, request: Request, generation: GenerationConfig | None = None,
               on_token: TokenCallback | None = None, *, index: int | None = None,
               keep_logits: bool = False, max_prompt_tokens: int | None = None) -> Handle:
        """Queue `request`; invalid input (an unreadable image, a placeholder mismatch, a layer the model does
        not have) raises here. `on_token(token_id, text_delta)` is called for each generated token but the
        end-of-sequence one, with the text it adds; `index` names the request in error messages (default: its
        submission number); `keep_logits` keeps each step's logits on the handle (tests, debugging);
        `max_prompt_tokens` bounds the prompt (visual tokens included) below the model's context."""
        generation = generation or GenerationConfig()
        with self._lock:
            number = self._next_id
            self._next_id += 1
        plan = self.engine.check_plan(self.engine.plan(request.reduction or self.engine.reduction))
        prepared = self.engine.prepare_one(request, number if index is None else index, generation.max_new_tokens,
                                           max_prompt_tokens)
        work = _Work(number, request, generation, plan, prepared, on_token, keep_logits)
        work.handle = Handle(self, work)
        with self._lock:
            self._waiting.append(work)
        self._wake()
        return work.handle

    @property
    def running(self) -> int:
        """Requests in the running batch."""
        return len(self._rows)

    @property
    def waiting(self) -> int:
        """Requests submitted and not yet running."""
        return len(self._waiting) + len(self._ready)

    @property
    def tokens_in_use(self) -> int:
        """Cache cost reserved by the running requests."""
        return sum(w.cost for w in self._rows)

    @property
    def batch(self) -> DecodeBatch | None:
        """The running batch's cache and layouts (None when nothing runs)."""
        return self._batch

    def idle(self) -> bool:
        return not self._rows and not self._ready and not self._waiting

    def run_until_idle(self) -> None:
        """Drive `step()` until every submitted request is done."""
        while self.step():
            pass

    def start(self) -> None:
        """Drive the scheduler from a daemon thread until `close()`."""
        if self._thread is not None:
            return
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="restore-scheduler", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the loop thread started by `start()` (requests still queued stay queued)."""
        thread = self._thread
        if thread is None:
            return
        self._closing = True
        self._wake()
        thread.join()
        self._thread = None

    def _loop(self) -> None:
        while not self._closing:
            try:
                busy = self.step()
            except Exception:
                logger.exception("scheduler step failed; its running requests were failed with the error")
                continue
            if not busy:
                with self._wakeup:
                    if self.idle() and not self._closing:
                        self._wakeup.wait(timeout=1.0)

    def _wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()

    # --- one step
    def step(self) -> bool:
        """Admit, decode one token for every running request, retire; True while work remains."""
        with self._step_lock, torch.inference_mode():
            self._drop_cancelled()
            try:
                self._admit()
                if self._rows:
                    self._decode_step()
            except Exception as err:
                # The batch may be half updated: every running request fails with the error, nothing hangs.
                for work in self._rows:
                    work.handle._finish(None, err)
                self._rows, self._batch, self._sampler = [], None, None
                raise
            return not self.idle()

    def _drop_cancelled(self) -> None:
        with self._lock:
            queued = [w for w in self._waiting if w.handle.cancelled]
            for w in queued:
                self._waiting.remove(w)
        queued += [w for w in self._ready if w.handle.cancelled]
        for w in queued:
            if w in self._ready:
                self._ready.remove(w)
            w.handle._finish(None, RequestCancelled(f"request {w.id} was cancelled before it ran"))
        gone = [i for i, w in enumerate(self._rows) if w.handle.cancelled]
        if gone:
            self._leave(gone)

    def _admit(self) -> None:
        room = self.max_running - len(self._rows) if self.max_running is not None else math.inf
        if room <= 0:
            return
        if len(self._ready) < self.prefill_group:
            with self._lock:
                group = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.prefill_group - len(self._ready)))]
            if group:
                self._ready.extend(self._encode(group))
        used = self.tokens_in_use
        admitted: list[_Work] = []
        while self._ready and len(admitted) < min(room, self.prefill_group):
            work = self._ready[0]
            if self.max_batch_tokens is not None and used + work.cost > self.max_batch_tokens:
                break
            self._ready.popleft()
            admitted.append(work)
            used += work.cost
        if admitted:
            self._prefill(admitted)

    def _encode(self, group: list[_Work]) -> list[_Work]:
        """Vision tower and pre-LLM reduction of `group`; requests that fail are finished with their error
        (a failing group is retried one by one, so one bad request fails alone)."""
        try:
            seqs, reduced, timings = self.engine._encode([w.prepared for w in group], [w.plan for w in group])
        except Exception as err:
            if len(group) == 1:
                group[0].handle._finish(None, err)
                return []
            return [w for one in group for w in self._encode([one])]
        out = []
        for work, seq, red in zip(group, seqs, reduced, strict=True):
            work.seq, work.reduced, work.timings = seq, red, dict(timings)
            work.layer_tokens = work.plan.layer_lengths(red, self.depth)
            work.cost = math.ceil(sum(work.layer_tokens) / self.depth) + work.generation.max_new_tokens
            if self.max_batch_tokens is not None and work.cost > self.max_batch_tokens:
                work.handle._finish(None, ValueError(
                    f"request {work.id} needs {work.cost} cache tokens ({work.cost - work.generation.max_new_tokens} "
                    f"after reduction + max_new_tokens {work.generation.max_new_tokens}), more than max_batch_tokens "
                    f"{self.max_batch_tokens}; raise max_batch_tokens, lower max_new_tokens or the budget"))
                continue
            out.append(work)
        return out

    def _prefill(self, group: list[_Work]) -> None:
        try:
            pre = self.engine._prefill_reduced(
                [w.seq for w in group], [w.reduced for w in group], [w.plan for w in group], {}
            )
        except Exception as err:
            for w in group:
                w.handle._finish(None, err)
            return
        now = time.perf_counter()
        for i, work in enumerate(group):
            if pre.layer_tokens[i] != work.layer_tokens:  # the plan's count and the prefill's must agree
                logger.warning("request %d: planned cache %s, prefilled %s", work.id, work.layer_tokens, pre.layer_tokens[i])
                work.layer_tokens = pre.layer_tokens[i]
            work.info = _seq_stats(work.seq, pre.seqs[i])
            work.prepared = work.seq = work.reduced = None  # the cache holds what decoding needs
            work.batch_size = len(group)
            work.timings = {**work.timings, "prefill_ms": pre.timings["prefill_ms"]}
            work.full_ms = pre.timings["prefill_ms"] * self.engine._full_over_run(pre.full_tokens[i], work.layer_tokens)
            work.joined = now
            work.detok = Detokenizer(self.engine.adapter.tokenizer)
            work.stops = StopWatch(work.generation.stop)
            gen = work.generation
            if gen.do_sample and gen.seed is not None:
                work.generator = torch.Generator(device=self.engine.device).manual_seed(gen.seed)
        next_pos = torch.stack([s.next_position for s in pre.seqs]).to(self.engine.device)
        try:
            batch = DecodeBatch(pre.layouts, pre.cache, pre.logits, next_pos, [list(w.layer_tokens) for w in group])
            if self._batch is None:
                self._batch = batch
            else:
                self._batch.merge(batch)
        except Exception as err:
            for w in group:
                w.handle._finish(None, err)
            raise
        self._rows.extend(group)
        self._sampler = None

    def _decode_step(self) -> None:
        batch = self._batch
        if self._sampler is None:
            self._sampler = Sampler([w.generation for w in self._rows], [w.generator for w in self._rows],
                                    self.engine.device)
        chosen = self._sampler.choose(batch.logits)
        ids = chosen.tolist()  # the step's one transfer to the host
        keep = [i for i, w in enumerate(self._rows) if w.keep_logits]
        if keep:
            kept = batch.logits[keep].cpu()
            for j, i in enumerate(keep):
                self._rows[i].logits.append(kept[j])
        finished = []
        for i, (work, tok) in enumerate(zip(self._rows, ids, strict=True)):
            if tok in self.eos and not work.generation.ignore_eos:
                finished.append(i)
                continue
            work.tokens.append(tok)
            # Text deltas only when someone reads them: a stream or stop strings.
            delta = work.detok.push(tok) if work.on_token is not None or work.stops.stops else ""
            if work.on_token is not None:
                try:
                    work.on_token(tok, delta)
                except Exception as err:  # a failing callback ends its own request only
                    work.error = err
                    finished.append(i)
                    continue
            if work.stops.hit(delta) or len(work.tokens) >= work.generation.max_new_tokens:
                finished.append(i)
        if finished:
            keep_rows = self._leave(finished)
            if not keep_rows:
                return
            chosen = chosen[torch.tensor(keep_rows, device=chosen.device)]
        self._forward(chosen)

    def _leave(self, rows: list[int]) -> list[int]:
        """Finish the requests at `rows` and free their cache rows; returns the rows kept."""
        gone = set(rows)
        now = time.perf_counter()
        for i in sorted(gone):
            self._finish(self._rows[i], (now - self._rows[i].joined) * 1e3)
        keep = [i for i in range(len(self._rows)) if i not in gone]
        self._rows = [self._rows[i] for i in keep]
        self._sampler = None
        if not keep:
            self._batch = None
        else:
            self._batch.select(keep)
        return keep

    def _forward(self, tokens: torch.Tensor) -> None:
        """One decode step of the running batch, feeding each row its chosen token."""
        batch, engine = self._batch, self.engine
        positions = batch.next_pos[:, None, :]
        ctx = ForwardContext.decoding(engine.rope, batch.layouts)
        ctx.begin_decode(positions)  # every layout gains the new token
        with active(ctx):
            out = engine.adapter.text_model(
                inputs_embeds=engine.adapter.embed(tokens[:, None]),
                attention_mask=batch.layouts[0].valid.long(),
                position_ids=engine.adapter.position_ids(positions),
                past_key_values=batch.cache,
                use_cache=True,
            )
            batch.logits = engine.adapter.lm_head(out.last_hidden_state[:, -1]).float()
        batch.advanced()

    def _finish(self, work: _Work, decode_ms: float) -> None:
        if work.error is not None:
            work.handle._finish(None, work.error)
            return
        cfg = work.plan.config
        stats = Stats(
            method=cfg.method,
            budget=cfg.budget,
            restore=cfg.restore.enabled and cfg.reduces,
            **work.info,
            encode_ms=work.timings["encode_ms"],
            reduce_ms=work.timings["reduce_ms"],
            prefill_ms=work.timings["prefill_ms"],
            layer_tokens=work.layer_tokens,
            full_prefill_ms_est=work.full_ms,
            decode_ms=decode_ms,
            generated_tokens=len(work.tokens),
            batch_size=work.batch_size,
        )
        text = self.engine.text_of(work.tokens, work.generation.stop)
        work.handle._finish(Result(text=text, token_ids=list(work.tokens), stats=stats))
