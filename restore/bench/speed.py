"""Prefill latency, decode throughput and memory: full vs reduced vs reduced+RESTORE (a benchmark, not a test).

One model, one process. Settings: every visual token (method `none`); each base
method at each budget as its authors ran it (`RestoreConfig(enabled=False)`);
the same with RESTORE. Each setting runs at each batch size on generated scenes
with the default caption prompt placed by `Engine.media_prompt`. Order: one warm-up round, one
memory round (peak memory per setting, untimed), then `--runs` timed rounds (one
count, or one per batch size) with the settings interleaved inside each round and
the order reversed every other round (A B C, C B A, ...), so that drift in a shared
machine's speed hits every setting alike. Medians and min/max are reported;
RESTORE's overhead is the median of the per-round ratios to its base method.

Prefill (time to first token) is the engine's encode + reduce + prefill time:
vision tower, reduction (RESTORE's own steps included) and the LLM prefill up to
the first token's logits; CPU preprocessing (image resize, tokenising) is the same
for every setting and is counted only in end-to-end requests/s. Beside each
speedup stands the FLOPs bound FLOPs(full)/FLOPs(reduced) from the model's shapes.
EOS is switched off so that every request generates exactly `--max-new-tokens`.

    python -m restore.bench.speed --arch llava-1.5-7b --scale 0.125 --batch-sizes 1,4 --out out/speed
    restore bench speed --model PATH --device cuda --batch-sizes 1,4,16
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import logging
import os
import platform
import resource
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from restore.bench.report import write_report
from restore.config import ReductionConfig, RestoreConfig
from restore.engine import Engine, resolve_dtype
from restore.flops import prefill_flops
from restore.methods import get_method
from restore.plan import Plan, fit_layers
from restore.prompts import DEFAULT_CAPTION_PROMPTS
from restore.request import Request

logger = logging.getLogger(__name__)



# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Setting:
    method: str
    budget: int | None
    restore: bool
    config: ReductionConfig

    @property
    def plan(self) -> Plan:
        return Plan.of(self.config)

    @property
    def label(self) -> str:
        if self.budget is None:
            return "full"
        return f"{self.method}{'+restore' if self.restore else ''}@{self.budget}"


def _settings(methods: list[str], budgets: list[int], depth: int, layer: int | None) -> list[Setting]:
    out = [Setting("none", None, False, ReductionConfig())]
    for method in methods:
        k_layer = layer if get_method(method).stage == "llm" else None  # pre-LLM methods refuse a layer
        for budget in budgets:
            for on in (False, True):
                cfg = ReductionConfig(method=method, budget=budget, layer=k_layer, restore=RestoreConfig(enabled=on))
                # What the engine runs: default in-LLM layers at their relative depth in this model.
                out.append(Setting(method, budget, on, fit_layers(cfg, depth)))
    return out


# --------------------------------------------------------------------------- shapes, FLOPs, KV cache


def vision_flops(model, images: int, visual_tokens: int, layers: int | None = None) -> float:
    """Vision tower (`layers` of its layers, default all) + projector for `images` images with `visual_tokens`
    tokens in all.

    Exact for LLaVA-1.5 (CLIP, n = patches + 1 per image, GELU MLP 2ndm). Other towers are
    approximated: Qwen2.5-VL as n = visual tokens x merge^2 with full attention and a SwiGLU MLP,
    anyres towers as whole crops of (image_size / patch)^2 patches.
    """
    vc = getattr(model.config, "vision_config", None)
    if vc is None or images == 0:
        return 0.0
    d, m = vc.hidden_size, vc.intermediate_size
    depth = layers or getattr(vc, "num_hidden_layers", None) or vc.depth
    mlp = 2
    if hasattr(vc, "image_size") and hasattr(vc, "patch_size"):
        patches = (vc.image_size // vc.patch_size) ** 2
        cls = 1 if str(getattr(vc, "model_type", "")).startswith("clip") else 0
        crops = max(images, round(visual_tokens / patches))
        n, count = patches + cls, crops
    else:
        merge = getattr(vc, "spatial_merge_size", 1)
        n, count, mlp = visual_tokens * merge**2, 1, 3
    tower = count * depth * (4 * n * d * d + 2 * n * n * d + mlp * n * d * m)
    projector = getattr(getattr(model, "model", model), "multi_modal_projector", None)
    proj = 0.0
    if projector is not None:
        # A linear projector costs one multiply-accumulate per weight per token.
        proj = visual_tokens * sum(p.numel() for p in projector.parameters() if p.dim() == 2)
    return float(tower + proj)


def kv_cache_bytes(lengths: list[int], s: dict, dtype: torch.dtype) -> int:
    """Keys and values of every layer, each layer holding the tokens it saw."""
    per_token = 2 * s["kv_heads"] * s["head_dim"] * torch.empty(0, dtype=dtype).element_size()
    return int(sum(lengths) * per_token)


# --------------------------------------------------------------------------- memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def _mallinfo2():
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    return fn


_MALLINFO2 = _mallinfo2()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        # ru_maxrss never goes down, so this fallback only sees new highs (KiB on Linux).
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_memory_in_use() -> tuple[int, str]:
    """Bytes the process holds now, and how they were measured.

    glibc's in-use heap + mmapped blocks is preferred: RSS keeps freed heap pages, so after
    the first large setting it barely moves and would read ~0 for every later one.
    """
    if _MALLINFO2 is not None:
        m = _MALLINFO2()
        return m.uordblks + m.hblkhd, "malloc in use (glibc mallinfo2), sampled"
    return _rss_bytes(), "RSS, sampled"


class PeakMemory:
    """Peak memory above the level at entry: CUDA allocator peak, or sampled malloc use / RSS on CPU.

    CPU memory has no resettable peak counter like CUDA's (ru_maxrss only grows), so a thread
    samples it every millisecond while the setting runs; spikes shorter than that can be missed.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.001) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak = 0
        self.how = "torch.cuda.max_memory_allocated" if device.type == "cuda" else cpu_memory_in_use()[1]

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            return self
        self._base = self._high = cpu_memory_in_use()[0]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._high = max(self._high, cpu_memory_in_use()[0])

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
            return
        self._stop.set()
        self._thread.join()
        self._high = max(self._high, cpu_memory_in_use()[0])
        self.peak = self._high - self._base


# --------------------------------------------------------------------------- measuring


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _once(engine: Engine, requests: list[Request], max_new_tokens: int) -> dict:
    t = time.perf_counter()
    results = engine.generate(requests, max_new_tokens=max_new_tokens)
    wall = time.perf_counter() - t
    s = results[0].stats  # timings are per batch; token counts are equal across this batch
    return {
        "wall_s": wall,
        "encode_ms": s.encode_ms,
        "reduce_ms": s.reduce_ms,
        "llm_prefill_ms": s.prefill_ms,
        "prefill_ms": s.encode_ms + s.reduce_ms + s.prefill_ms,
        "decode_ms": s.decode_ms,
        "generated_tokens": min(r.stats.generated_tokens for r in results),
        "visual_tokens": s.visual_tokens,
        "kept_tokens": s.kept_tokens,
        "prompt_tokens": s.prompt_tokens,
        "layer_tokens": s.layer_tokens,
    }


def load(args) -> tuple[Engine, str, float]:
    if args.model:
        engine = Engine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
        name, scale = args.model, 1.0
    else:
        from restore.archs import random_llava

        model, processor = random_llava(args.arch, scale=args.scale, seed=args.seed, dtype=resolve_dtype(args.dtype, args.device))
        engine = Engine(model.to(args.device), processor)
        name, scale = args.arch, args.scale
    # An empty EOS list (not None, which falls back to the tokenizer's) makes every request
    # generate exactly max_new_tokens, so decode throughput compares equal work.
    engine.model.generation_config.eos_token_id = []
    return engine, name, scale


def measure(engine: Engine, settings: list[Setting], batch_sizes: list[int], runs: dict[int, int], max_new_tokens: int):
    """Samples per (setting label, batch size), in round order; `runs` maps batch size -> timed rounds."""
    from restore.zoo.world import scene_image

    images = [scene_image(i, 336) for i in range(max(batch_sizes))]
    combos = [(s, b) for b in batch_sizes for s in settings]

    prompt = engine.media_prompt(DEFAULT_CAPTION_PROMPTS["images"], 1)

    def requests(setting: Setting, bsz: int) -> list[Request]:
        return [Request(prompt, [images[i]], reduction=setting.config) for i in range(bsz)]

    logger.info("warm-up: %d settings x batch sizes", len(combos))
    for s, b in combos:
        _once(engine, requests(s, b), max_new_tokens)
    memory = {}
    for s, b in combos:
        with PeakMemory(engine.device) as peak:
            _once(engine, requests(s, b), max_new_tokens)
        memory[(s.label, b)] = peak.peak
    samples: dict[tuple[str, int], list[dict]] = {(s.label, b): [] for s, b in combos}
    for run in range(max(runs.values())):
        t = time.perf_counter()
        here = [(s, b) for s, b in combos if run < runs[b]]
        # Every setting once per round, the order reversed every other round (A B C, C B A, ...):
        # drift in a shared machine's speed then hits every setting alike, and a setting's
        # neighbour (base method beside + RESTORE) alternates between before and after it.
        for s, b in here if run % 2 == 0 else reversed(here):
            gc.collect()
            samples[(s.label, b)].append(_once(engine, requests(s, b), max_new_tokens))
        logger.info("run %d/%d: %.1f s", run + 1, max(runs.values()), time.perf_counter() - t)
    return samples, memory


# --------------------------------------------------------------------------- report


def build_results(engine: Engine, settings, batch_sizes, samples, memory, max_new_tokens) -> list[dict]:
    shapes = engine.shapes
    dtype = engine.model.dtype
    rows = []
    full_flops = {}
    for b in batch_sizes:
        for s in settings:
            runs = samples[(s.label, b)]
            first = runs[0]
            visual, kept, prompt = first["visual_tokens"], first["kept_tokens"], first["prompt_tokens"]
            lengths = first["layer_tokens"]  # what each decoder layer ran on (the engine's record)
            tower = vision_flops(engine.model, 1, visual, engine.adapter.vision_layers_run())
            flops = tower + prefill_flops(lengths, shapes)
            if s.budget is None:
                full_flops[b] = flops
            prefill = _spread([r["prefill_ms"] for r in runs])
            generated = first["generated_tokens"]
            if generated != max_new_tokens:
                logger.warning("%s: generated %d tokens, not %d", s.label, generated, max_new_tokens)
            # Tokens chosen in the decode window (the first comes from the prefill logits) per second.
            tps = [r["generated_tokens"] * b / r["decode_ms"] * 1e3 for r in runs]
            rps = [b / r["wall_s"] for r in runs]
            rows.append(
                {
                    "method": s.method,
                    "budget": s.budget,
                    "restore": s.restore,
                    "layer": s.plan.layers[0] if s.plan.in_llm else None,
                    "batch_size": b,
                    "visual_tokens": visual,
                    "kept_tokens": kept,
                    "prompt_tokens": prompt,
                    "prefill_ms": prefill["median"],
                    "prefill_ms_min": prefill["min"],
                    "prefill_ms_max": prefill["max"],
                    "encode_ms": statistics.median(r["encode_ms"] for r in runs),
                    "reduce_ms": statistics.median(r["reduce_ms"] for r in runs),
                    "llm_prefill_ms": statistics.median(r["llm_prefill_ms"] for r in runs),
                    "flops": flops,
                    "decode_ms": statistics.median(r["decode_ms"] for r in runs),
                    "decode_ms_per_step": statistics.median(r["decode_ms"] / max(1, generated - 1) for r in runs),
                    "generated_tokens": generated,
                    "decode_tokens_per_s": statistics.median(tps),
                    "decode_tokens_per_s_min": min(tps),
                    "decode_tokens_per_s_max": max(tps),
                    "requests_per_s": statistics.median(rps),
                    "requests_per_s_min": min(rps),
                    "requests_per_s_max": max(rps),
                    "peak_memory_bytes": int(memory[(s.label, b)]),
                    "kv_cache_bytes": b * kv_cache_bytes(lengths, shapes, dtype),
                    "kv_cache_bytes_per_request": kv_cache_bytes(lengths, shapes, dtype),
                    "runs": len(runs),
                }
            )
    full_ms = {r["batch_size"]: r["prefill_ms"] for r in rows if r["budget"] is None}
    base_of = {(s.method, s.budget): s.label for s in settings if not s.restore}
    for s, r in zip([s for _ in batch_sizes for s in settings], rows, strict=True):
        b = r["batch_size"]
        r["prefill_speedup"] = full_ms[b] / r["prefill_ms"]
        r["flops_bound"] = full_flops[b] / r["flops"]
        r["bound_fraction"] = r["prefill_speedup"] / r["flops_bound"]
        # RESTORE's cost over the same base method, budget and batch size: the median of the
        # per-round ratios. Both ran in the same round, side by side, so the machine's drift
        # between rounds cancels, which a ratio of two medians would not do.
        r["restore_overhead"] = None
        if s.restore:
            pairs = zip(samples[(s.label, b)], samples[(base_of[(s.method, s.budget)], b)], strict=True)
            r["restore_overhead"] = statistics.median(x["prefill_ms"] / y["prefill_ms"] for x, y in pairs) - 1
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| method | RESTORE | budget | batch | prefill ms (min–max) | speedup | FLOPs bound | of bound "
        "| RESTORE overhead | decode tok/s | req/s | peak MB | KV MB |"
    )
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        method = r["method"] if r["layer"] is None else f"{r['method']} (K={r['layer']})"
        over = "" if r["restore_overhead"] is None else f"{100 * r['restore_overhead']:+.1f}%"
        lines.append(
            f"| {method} | {'yes' if r['restore'] else 'no'} | {r['budget'] or 'all'} | {r['batch_size']} "
            f"| {r['prefill_ms']:.1f} ({r['prefill_ms_min']:.1f}–{r['prefill_ms_max']:.1f}) "
            f"| {r['prefill_speedup']:.2f}x | {r['flops_bound']:.2f}x | {r['bound_fraction']:.2f} | {over} "
            f"| {r['decode_tokens_per_s']:.1f} | {r['requests_per_s']:.2f} "
            f"| {r['peak_memory_bytes'] / 2**20:.1f} | {r['kv_cache_bytes'] / 2**20:.2f} |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers
    import matplotlib.pyplot as plt

    sizes = sorted({r["batch_size"] for r in rows})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False)
    reduced = [r for r in rows if r["budget"] is not None]
    for ax, b in zip(axes[0], sizes):
        here = [r for r in reduced if r["batch_size"] == b]
        # Every line starts at the full model: all visual tokens, speedup 1.
        full = [(r["visual_tokens"], 1.0) for r in rows if r["budget"] is None and r["batch_size"] == b][:1]
        bounds = {}
        for method in sorted({r["method"] for r in here}):
            for on in (False, True):
                pts = sorted((r["budget"], r["prefill_speedup"]) for r in here if r["method"] == method and r["restore"] == on)
                if pts:
                    ax.plot(*zip(*(pts + full)), marker="o", linestyle="-" if on else "--",
                            label=f"{method}{' + RESTORE' if on else ''}")
            bound = tuple(sorted((r["budget"], r["flops_bound"]) for r in here if r["method"] == method and not r["restore"]))
            bounds.setdefault(bound, []).append(method)
        # Methods acting at the same place share one bound; draw each distinct bound once, in black.
        for style, (bound, methods) in zip(["-", ":", "-.", (0, (1, 3))], bounds.items()):
            ax.plot(*zip(*(list(bound) + full)), color="black", linestyle=style, marker="x", linewidth=1.2,
                    label=f"FLOPs bound ({', '.join(methods)})")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.set_xlabel("visual tokens kept per image")
        ax.set_ylabel("prefill speedup vs all tokens")
        ax.set_title(f"batch {b}")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _runs_text(runs: dict[int, int]) -> str:
    counts = set(runs.values())
    if len(counts) == 1:
        return str(counts.pop())
    return "/".join(f"{n} (batch {b})" for b, n in runs.items())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="restore bench speed", description=__doc__.splitlines()[0])
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", help="a supported checkpoint (local dir, cached hub id, s3://prefix)")
    src.add_argument("--arch", default="llava-1.5-7b", help="random-weight LLaVA architecture (restore.archs.LLAVA_SHAPES)")
    p.add_argument("--scale", type=float, default=1.0, help="--arch: shrink widths and depths by this factor")
    p.add_argument("--seed", type=int, default=0, help="--arch: weight seed (weights do not matter for speed)")
    p.add_argument("--methods", default="visionzip,fastv", help="base methods, comma separated")
    p.add_argument("--budgets", default="192,128,64", help="visual tokens kept per image (of 576 for LLaVA-1.5)")
    p.add_argument("--layer", type=int, default=None, help="in-LLM methods: reduce at this decoder layer K")
    p.add_argument("--batch-sizes", default="1,4,16")
    p.add_argument("--runs", default="5", help="timed rounds after one warm-up round: one number, or one per "
                   "batch size (e.g. 15,15,5: small batches are quick and noisier, so give them more rounds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--max-new-tokens", type=int, default=16, help="tokens every request generates (EOS is off)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", default="out/speed")
    args = p.parse_args(argv)
    runs = _ints(args.runs)
    sizes = _ints(args.batch_sizes)
    if len(runs) == 1:
        runs = runs * len(sizes)
    if len(runs) != len(sizes):
        p.error(f"--runs has {len(runs)} values for {len(sizes)} batch sizes; give one, or one per batch size")
    if min(runs) < 1 or args.max_new_tokens < 1:
        p.error("--runs and --max-new-tokens must be at least 1")
    args.runs = dict(zip(sizes, runs, strict=True))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _main(args)
    finally:
        torch.set_num_threads(threads)  # the caller's process (a CLI, a test session) keeps its setting


def _main(args: argparse.Namespace) -> dict:
    methods = [m for m in args.methods.split(",") if m.strip()]
    budgets, batch_sizes = _ints(args.budgets), _ints(args.batch_sizes)
    engine, name, scale = load(args)
    shapes = engine.shapes
    settings = _settings(methods, budgets, shapes["layers"], args.layer)
    samples, memory = measure(engine, settings, batch_sizes, args.runs, args.max_new_tokens)
    rows = build_results(engine, settings, batch_sizes, samples, memory, args.max_new_tokens)

    dev = engine.device
    device_name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else _cpu_name()
    threads = torch.get_num_threads()
    report = {
        "device": str(dev),
        "device_name": device_name,
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "arch": name,
        "scale": scale,
        "dtype": str(engine.model.dtype).removeprefix("torch."),
        "text_shapes": shapes,
        "weights_bytes": sum(p.numel() * p.element_size() for p in engine.model.parameters()),
        "peak_memory_measure": PeakMemory(dev).how + ", above the level before each call",
        "prompt": engine.media_prompt(DEFAULT_CAPTION_PROMPTS["images"], 1),
        "runs": {str(b): n for b, n in args.runs.items()},  # per batch size
        "max_new_tokens": args.max_new_tokens,
        "torch": torch.__version__,
        "results": rows,
    }
    where = f"{dev.type} ({device_name}, {threads} threads)" if dev.type == "cpu" else f"{device_name}"
    title = (
        f"{name} scale {scale:g} ({shapes['layers']} layers x {shapes['hidden']}), {report['dtype']}, {where}, "
        f"median of {_runs_text(args.runs)} runs, {args.max_new_tokens} new tokens"
    )
    md = table(rows)
    out = write_report(args.out, "speed", report, f"{title}\n\n{md}")
    plot(rows, out / "speed.png", title)
    print(title)
    print(md)
    return report


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    main()
