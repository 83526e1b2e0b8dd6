"""Benchmark: LWM inference throughput, prefill and decode tokens/s, per preset and decoding path.

Side by side in one run, random weights (numpy-drawn, seeded), float32, one prompt row:
  - "chat stream": `lwm_model.chat.stream_generate` (what `lwm-chat` runs): one compiled prefill,
    then compiled chunks of --chunk decoding steps, handing tokens back between chunks;
  - "generate": `lwm_model.generate.generate`, the whole answer in one compiled loop (the
    reference: streaming should cost little over it);
  - "vision CFG": `lwm_model.vision_generate.sample_vision` with guidance (what `lwm-generate`
    runs): two rows (conditional + unconditional) per generated token, <eof> every 257.
Prefill tokens/s = prompt tokens / (time to the first token); decode tokens/s = the other new
tokens / the rest of the time, per prompt row (CFG's unconditional row, padded to the prompt's
length, is work but is not counted). "generate" cannot be timed apart: its prefill is taken to be
the chat stream's, and its decode time is its total minus that. Each cell is
the median of --repeats timed runs after one warm-up run (compilation excluded). CPU-seconds are
user+system of this process (every thread) over the timed runs, per run; the machine is shared, so
CPU-seconds are the steadier figure. On CPU the default presets are "tiny" and "debug" (2 layers,
hidden 256, LLaMA's 32K vocabulary); add "200m" with --presets. With a GPU (JAX_PLATFORMS=cuda) the
same rows run there.

Run (the command recorded in docs/benchmarks.md):
    python bench/inference.py
    python bench/inference.py --presets tiny,debug,200m --prompt 2048 --new 128
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from lwmkit.eval.inference.chat_cli import random_params  # noqa: E402
from lwmkit.lwm_model.chat import prompt_batch, stream_generate  # noqa: E402
from lwmkit.lwm_model.config import preset  # noqa: E402
from lwmkit.lwm_model.generate import SamplingConfig, generate  # noqa: E402
from lwmkit.lwm_model.model import LWM  # noqa: E402
from lwmkit.lwm_model.prompts import TokenSeq  # noqa: E402
from lwmkit.lwm_model.vision_generate import GuidanceConfig, sample_vision  # noqa: E402


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _stream(model, params, batch, settings, chunk):
    """(seconds to the first token, seconds for the rest) of one streamed answer."""
    start = time.perf_counter()
    pieces = stream_generate(model, params, batch, settings, chunk=chunk)
    next(pieces)
    first = time.perf_counter()
    for _ in pieces:
        pass
    return first - start, time.perf_counter() - first


def _fused(model, params, batch, settings, prefill_s):
    start = time.perf_counter()
    jax.block_until_ready(generate(model, params, batch, settings).tokens)
    total = time.perf_counter() - start
    return prefill_s, max(total - prefill_s, 1e-9)


def _cfg(model, params, prompt, uncond, n):
    start = time.perf_counter()
    sample_vision(model, params, [prompt], 1, GuidanceConfig(3.0), uncond=[uncond])
    first = time.perf_counter()
    sample_vision(model, params, [prompt], n, GuidanceConfig(3.0), uncond=[uncond])
    total = time.perf_counter() - first
    return first - start, max(total - (first - start), 1e-9)


def bench(name: str, prompt_len: int, new: int, chunk: int, repeats: int) -> list[dict]:
    overrides = {} if name == "tiny" else {"vocab_size": 32000}
    config = preset(name, max_sequence_length=max(2048, prompt_len + new + 8), **overrides)
    model = LWM(config)
    params = jax.device_put(random_params(config, 0))
    rng = np.random.default_rng(0)
    text = TokenSeq.text([1] + rng.integers(3, config.vocab_size, prompt_len - 1).tolist())
    batch = {k: jnp.asarray(v) for k, v in prompt_batch(model, [text]).items()}
    settings = SamplingConfig(new, eos_id=None)
    frames = max(1, new // 257)
    vision_new = frames * 257
    uncond = TokenSeq.text([1, 5, 6])
    rows = []
    prefill_s = []

    def run(label, fn, new_tokens):
        fn()  # warm-up: compiles
        times, cpu0 = [], time.process_time()
        for _ in range(repeats):
            times.append(fn())
        cpu = (time.process_time() - cpu0) / repeats
        pre = statistics.median(t[0] for t in times)
        dec = statistics.median(t[1] for t in times)
        rows.append(dict(preset=name, path=label, prompt=prompt_len, new=new_tokens,
                         prefill=prompt_len / pre, decode=(new_tokens - 1) / dec, cpu=cpu, wall=pre + dec))  # fmt: skip
        return pre

    prefill_s.append(run("chat stream", lambda: _stream(model, params, batch, settings, chunk), new))
    run("generate", lambda: _fused(model, params, batch, settings, prefill_s[0]), new)
    run("vision CFG", lambda: _cfg(model, params, text, uncond, vision_new), vision_new)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="tiny,debug", help="comma-separated lwm_model presets")
    p.add_argument("--prompt", type=int, default=1024, help="prompt tokens")
    p.add_argument("--new", type=int, default=128, help="new tokens (vision CFG: whole frames of at least one)")
    p.add_argument("--chunk", type=int, default=32, help="chat stream: decoding steps per compiled call")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    device = jax.devices()[0]
    print(f"# backend {jax.default_backend()} ({device.device_kind}), {os.cpu_count()} CPUs, jax {jax.__version__}")
    print(f"# prompt {args.prompt} tokens, batch 1, float32, chunk {args.chunk}, median of {args.repeats}")
    head = ("preset", "path", "prompt", "new", "prefill tok/s", "decode tok/s", "CPU-s/run", "wall-s/run")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name in args.presets.split(","):
        for r in bench(name.strip(), args.prompt, args.new, args.chunk, args.repeats):
            print(f"| {r['preset']} | {r['path']} | {r['prompt']} | {r['new']} | {r['prefill']:,.0f} | "
                  f"{r['decode']:,.1f} | {r['cpu']:.2f} | {r['wall']:.2f} |")  # fmt: skip
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
