"""Benchmark: lwm-train's optimiser step (lwmkit.lwm_model.train_step) on CPU, and on a GPU when one is present.

Side by side in one run, RingAttention against dense attention, for each model below: the jitted step
of the trainer (forward, backward, AdamW update) on packed batches (documents of random lengths,
a fifth of them vision spans, LWM's 0.5 x vision + 0.5 x text loss), each batch turned into global
arrays on the mesh as the trainer does (`to_global_arrays`, and the zigzag layout for the ring).
After two warm-up steps (compile time excluded) it reports per step: wall seconds, CPU-seconds
(user + system of this process, every thread; virtual CPU devices share the machine's cores),
tokens per second, and model FLOPs utilisation where a peak is known (GPU/TPU: dense bf16 peak
from `train_step.PEAK_FLOPS`; the FLOP count is `model_flops_per_token`: 6 x matmul parameters +
6 x layers x seq_len x hidden per token).

    CPU: 8 virtual devices as mesh dp=2 x sp=4 (the tests' "ring of 4"), float32;
         tiny (hidden 64, 2 layers) at 512 tokens x 8 rows, debug (hidden 256, 2 layers, 32K vocab)
         at 1,024 tokens x 4 rows.
    GPU: every GPU on the ring axis (one GPU: a ring of 1, i.e. blockwise attention), bf16 compute;
         tiny at 2,048 x 8, 200m at 8,192 x 4, 1b at 8,192 x 4.

Run (the command recorded in docs/benchmarks.md):
    python bench/train_step.py            # add --cpu-only to skip an available GPU
"""

from __future__ import annotations

import argparse
import os
import resource
import time

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import numpy as np  # noqa: E402

CPU_CASES = (("tiny", 512, 8), ("debug", 1024, 4))
GPU_CASES = (("tiny", 2048, 8), ("200m", 8192, 4), ("1b", 8192, 4))


def _cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


def packed_batch(rng: np.random.Generator, rows: int, seq_len: int, vocab: int, vision_codes: int) -> dict:
    """Rows of documents of random lengths (mean seq_len / 4), some of them vision spans, a little padding."""
    from lwmkit.packing.batches import shift_targets

    tokens = np.zeros((rows, seq_len), np.int32)
    vision = np.zeros((rows, seq_len), bool)
    seg = np.zeros((rows, seq_len), np.int32)
    pos = np.zeros((rows, seq_len), np.int32)
    for r in range(rows):
        start, doc = 0, 1
        while start < seq_len - 8:
            length = int(min(seq_len - start, max(8, rng.exponential(seq_len / 4))))
            end = start + length
            seg[r, start:end], pos[r, start:end] = doc, np.arange(length)
            if rng.random() < 0.2:
                vision[r, start + 1 : end - 1] = True
                tokens[r, start:end] = rng.integers(0, vision_codes, length)
            tokens[r, start:end] = np.where(vision[r, start:end], tokens[r, start:end],
                                            rng.integers(3, vocab, length))
            start, doc = end, doc + 1
    record = dict(tokens=tokens, vision_mask=vision, loss_weights=(seg > 0).astype(np.float32),
                  tokens_segment_ids=seg, tokens_positions=pos)
    return shift_targets(record)


def run_case(devices, mesh_dims, name, seq_len, rows, attention, precision, steps) -> dict:
    from lwmkit.lwm_model.config import preset
    from lwmkit.lwm_model.mesh import layout_batch, make_mesh
    from lwmkit.lwm_model.train_config import OptimizerConfig
    from lwmkit.lwm_model.train_step import (
        STEP_FIELDS,
        build_train_step,
        init_model_params,
        init_state,
        model_flops_per_token,
        peak_flops,
    )
    from lwmkit.packing.device_arrays import to_global_arrays

    mesh = make_mesh(mesh_dims, devices=devices)
    ring = mesh.shape["sp"]
    block = min(512, seq_len // ring)
    dtype = "bfloat16" if precision == "bf16" else "float32"
    config = preset(name, attention_impl=attention, ring_layout="zigzag", ring_block_q=block, ring_block_k=block,
                    max_sequence_length=max(seq_len, 2048), dtype=dtype)
    opt = OptimizerConfig(lr=1e-4, warmup_steps=0)
    step, tx, shardings = build_train_step(config, mesh, opt, 1000)
    params = jax.jit(lambda k: init_model_params(config, k), out_shardings=shardings["params"])(jax.random.key(0))
    state = jax.jit(lambda p: init_state(p, tx), out_shardings=shardings)(params)
    rng = np.random.default_rng(0)
    batches = [packed_batch(rng, rows, seq_len, config.vocab_size, config.vision_codes) for _ in range(2)]

    def one(i):
        fields = {k: batches[i % 2][k] for k in STEP_FIELDS}
        if attention == "ring":
            fields = layout_batch(fields, "zigzag", ring)
        return step(state, to_global_arrays(fields, mesh))

    for i in range(2):  # compile, then one more
        state, metrics = one(i)
    jax.block_until_ready(metrics)
    c0, w0 = _cpu_seconds(), time.perf_counter()
    for i in range(steps):
        state, metrics = one(i)
    loss = float(jax.device_get(metrics)["loss"])
    wall, cpu = (time.perf_counter() - w0) / steps, (_cpu_seconds() - c0) / steps
    tokens = rows * seq_len
    peak = peak_flops(mesh.devices.flat[0])
    mfu = None if peak is None else model_flops_per_token(config, seq_len) * tokens / wall / (peak * mesh.size)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return dict(model=name, params=n_params, attention=attention, seq_len=seq_len, rows=rows, step_s=wall,
                cpu_s=cpu, tokens_per_s=tokens / wall, mfu=mfu, loss=loss, padding=float(np.mean(
                    batches[0]["tokens_segment_ids"] == 0)))


def print_table(title: str, results: list[dict]) -> None:
    print(f"\n{title}")
    print("| model | params | attention | seq_len x rows | s/step (wall) | CPU-s/step | tokens/s | MFU | loss |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        mfu = "n/a (CPU)" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
        print(f"| {r['model']} | {r['params'] / 1e6:,.1f}M | {r['attention']} | {r['seq_len']:,} x {r['rows']} | "
              f"{r['step_s']:.3f} | {r['cpu_s']:.2f} | {r['tokens_per_s']:,.0f} | {mfu} | {r['loss']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row on CPU (GPU: 4x as many)")
    ap.add_argument("--cpu-only", action="store_true")
    args = ap.parse_args()
    cpu = jax.devices("cpu")
    results = [run_case(cpu, "2,1,1,4", name, seq, rows, attention, "fp32", args.steps)
               for name, seq, rows in CPU_CASES for attention in ("ring", "dense")]
    print(f"jax {jax.__version__}; {os.cpu_count()} CPU cores")
    print_table(f"CPU: {len(cpu)} virtual devices, mesh dp=2 x sp=4, float32", results)
    try:
        gpus = [] if args.cpu_only else jax.devices("gpu")
    except RuntimeError:
        gpus = []
    if gpus:
        results = [run_case(gpus, f"1,1,1,{len(gpus)}", name, seq, rows, attention, "bf16", 4 * args.steps)
                   for name, seq, rows in GPU_CASES for attention in ("ring", "dense")]
        print_table(f"GPU: {len(gpus)} x {gpus[0].device_kind}, mesh sp={len(gpus)}, bf16 compute, "
                    "float32 parameters", results)
    else:
        print("\nno GPU: GPU rows skipped")


if __name__ == "__main__":
    main()
