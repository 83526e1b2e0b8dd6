"""Benchmark: lwmkit's RingAttention against the `ringattention` package and dense attention.

Side by side in one run, on 4 and 8 virtual CPU devices (one ring over all of them), causal,
float32, batch 1, at 4K, 8K and 16K tokens:
  - lwmkit `ring_attention` (zigzag layout, blocks skipped when fully masked: the headline row);
  - `ringattention` 0.1.2 (LWM's dependency), its pure-JAX `ring_attention` called the way
    LWM's `lwm/llama.py` calls it (shard_map over "sp", segment ids replicated, query/key chunks
    of the block size, causal_block_size=1, `nothing_saveable` checkpoint policy);
  - dense attention (`dense_attention`, one jitted program; skipped where XLA's planned peak
    would exceed --dense-max-gib);
each on one document filling the row ("causal") and on a packed row of --docs documents
("packed": random lengths, seeded). Columns: CPU-seconds (user+system of this process, every
thread; the virtual devices share the machine's cores) and wall seconds per call, the mean of at
least --repeats calls and --min-cpu CPU-seconds after a warm-up call (compile time excluded), for
the forward pass and for forward+backward (gradients of q, k, v). Peak memory is XLA's plan for
the compiled program (arguments + outputs + temporaries, per device), from
`compiled.memory_analysis()`; "err" is the output's relative error against dense float32 where
dense ran.

Then: the block-pair work of each device, from `attention_work` (masked-out pairs count zero), for
the three fixed layouts and the per-row "balanced" one (lwmkit.lwm_model.balance): busiest device
over the average device per ring step (a step lasts as long as its busiest device; summed over
steps) and over the whole call.

Then (section "2d"): 2D sequence parallelism on 8 devices, side by side with the pure ring on the
same data: `ring_attention(..., ulysses_axis="ulysses")` on meshes (sp, ulysses) = (8, 1), (4, 2),
(2, 4), (1, 8), zigzag over the ring, --heads-2d heads (Ulysses splits them), at --lengths-2d
tokens, causal and packed: CPU-s and wall as above, and from the compiled HLO (bench/hlo_comm.py)
the MiB each device sends per attention call (= per layer) and the sequential communication steps,
for the forward pass and for forward+backward; "err" is against the pure ring's output.

The package is loaded from a separate target directory (never from the project's environment):
    /tmp/venv/bin/pip install --no-deps --target /tmp/ringpkg ringattention
and needs one compatibility shim on current JAX: its `__init__` calls
`jax.lib.xla_bridge.get_backend()`, removed from JAX; the shim sets `jax.lib.xla_bridge` to a
namespace whose `get_backend` is `jax.extend.backend.get_backend`. (Its shard_map call passes
`check_vma=False`, today's name for LWM's `check_rep=False`.)

Run (the command recorded in docs/benchmarks.md; --sections picks 1d, work, 2d):
    python bench/ring_attention.py
    python bench/ring_attention.py --sections work,2d --no-package
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import types

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from lwmkit.lwm_model.attention import dense_attention, ring_attention  # noqa: E402
from hlo_comm import communication  # noqa: E402
from lwmkit.lwm_model.layout import (  # noqa: E402
    LAYOUTS,
    ROW_LAYOUTS,
    apply_layout,
    attention_work,
    busiest_over_average,
    undo_layout,
)

MIB = 1 << 20


def load_ringattention(path: str):
    """The package's pure-JAX ring attention, imported from `path` with the one shim it needs."""
    import jax.extend.backend

    if not hasattr(jax.lib, "xla_bridge"):
        jax.lib.xla_bridge = types.SimpleNamespace(get_backend=jax.extend.backend.get_backend)
    sys.path.insert(0, path)
    try:
        import ringattention
    except ImportError as e:
        raise SystemExit(f"ringattention not found under {path}: pip install --no-deps --target {path} ringattention") from e
    finally:
        sys.path.remove(path)
    return ringattention.ringattention_jax


def packed_segment_ids(length: int, docs: int, seed: int = 0) -> np.ndarray:
    """[length] ids 1..docs, document lengths from `docs - 1` random cut points."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, length), docs - 1, replace=False))
    return np.repeat(np.arange(1, docs + 1), np.diff(np.concatenate([[0], cuts, [length]]))).astype(np.int32)


def _peak(compiled) -> float:
    m = compiled.memory_analysis()
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes) / MIB


def _timed(fn, args, repeats: int, min_cpu: float) -> tuple[float, float, object]:
    """Mean CPU-seconds and wall seconds per call, over at least `repeats` calls and `min_cpu` CPU-seconds."""
    out = jax.block_until_ready(fn(*args))  # warm-up
    calls, c0, w0 = 0, time.process_time(), time.perf_counter()
    while calls < repeats or time.process_time() - c0 < min_cpu:
        out = jax.block_until_ready(fn(*args))
        calls += 1
    return (time.process_time() - c0) / calls, (time.perf_counter() - w0) / calls, out


def _with_grad(attend):
    """attend(q, k, v) -> out, and the program computing out and d<out, g>/d(q, k, v)."""

    def fwd_bwd(q, k, v, g):
        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(g)

    return jax.jit(attend), jax.jit(fwd_bwd)


def implementations(mesh, seg: np.ndarray, block: int, ringpkg) -> dict:
    """name -> (prepare(x) -> laid-out input, finish(out) -> original order, attend(q, k, v))."""
    n = mesh.shape["sp"]
    x_spec = NamedSharding(mesh, P(None, "sp", None, None))
    layout = "zigzag"
    seg_ring = jax.device_put(apply_layout(seg, layout, n), NamedSharding(mesh, P(None, "sp")))
    ours = functools.partial(ring_attention, mesh=mesh, causal=True, layout=layout, block_q=block, block_k=block)

    impls = {
        "lwmkit ring (zigzag)": (
            lambda x: jax.device_put(apply_layout(x, layout, n), x_spec),
            lambda y: undo_layout(np.asarray(y), layout, n),
            lambda q, k, v: ours(q, k, v, seg_ring),
        )
    }
    if ringpkg is not None:
        chunk = min(block, seg.shape[1] // n)
        kwargs = dict(
            causal_block_size=1,
            deterministic=True,
            dropout_rng=None,
            attn_pdrop=0.0,
            query_chunk_size=chunk,
            key_chunk_size=chunk,
            dtype=jnp.float32,
            policy=jax.checkpoint_policies.nothing_saveable,
            precision=None,
            prevent_cse=True,
        )
        pkg = jax.shard_map(
            functools.partial(ringpkg, axis_name="sp", float32_logits=True, cache_idx=None, blockwise_kwargs=kwargs),
            mesh=mesh,
            in_specs=(P(None, "sp", None, None),) * 3 + (None, P(None, None)),
            out_specs=P(None, "sp", None, None),
            check_vma=False,
        )
        seg_all = jax.device_put(seg, NamedSharding(mesh, P(None, None)))  # replicated: the package needs it whole
        impls["ringattention pkg"] = (
            lambda x: jax.device_put(x, x_spec),
            np.asarray,
            lambda q, k, v: pkg(q, k, v, None, seg_all),
        )
    impls["dense"] = (
        lambda x: jax.device_put(x, jax.devices()[0]),
        np.asarray,
        lambda q, k, v: dense_attention(q, k, v, jnp.asarray(seg), jnp.asarray(seg), causal=True),
    )
    return impls


def run_case(mesh, seg, data, block, ringpkg, repeats, min_cpu, dense_max_gib) -> list[dict]:
    rows, reference = [], None
    for name, (prepare, finish, attend) in reversed(list(implementations(mesh, seg, block, ringpkg).items())):
        q, k, v, g = (prepare(x) for x in data)
        fwd, fwd_bwd = _with_grad(attend)
        c_fwd, c_both = fwd.lower(q, k, v).compile(), fwd_bwd.lower(q, k, v, g).compile()
        row = {"impl": name, "fwd_mib": _peak(c_fwd), "both_mib": _peak(c_both)}
        if name == "dense" and row["both_mib"] > dense_max_gib * 1024:
            rows.append(row | {"note": f"not run: plans {row['both_mib'] / 1024:.1f} GiB > --dense-max-gib"})
            continue
        row["fwd_cpu"], row["fwd_wall"], out = _timed(c_fwd, (q, k, v), repeats, min_cpu)
        row["both_cpu"], row["both_wall"], _ = _timed(c_both, (q, k, v, g), repeats, min_cpu)
        out = finish(out)
        if name == "dense":
            reference = out
        elif reference is not None:
            row["err"] = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        rows.append(row)
    return rows[::-1]


def two_d_rows(seg, data, block, splits, repeats, min_cpu) -> list[dict]:
    """The pure ring (ulysses=1) and 2D meshes over all devices, on the same causal or packed row."""
    rows, reference = [], None
    devices = len(jax.devices())
    layout = "zigzag"
    for u in splits:
        r = devices // u
        mesh = jax.make_mesh((r, u), ("sp", "ulysses"), axis_types=(AxisType.Explicit,) * 2)
        seq = NamedSharding(mesh, P(None, ("sp", "ulysses")))
        x_spec = NamedSharding(mesh, P(None, ("sp", "ulysses"), None, None))
        laid_seg = jax.device_put(apply_layout(seg, layout, r), seq)
        attend = functools.partial(ring_attention, mesh=mesh, causal=True, layout=layout, block_q=block, block_k=block,
                                   ulysses_axis="ulysses")  # size 1: the pure ring, no all-to-alls
        fwd, fwd_bwd = _with_grad(lambda q, k, v, attend=attend, laid_seg=laid_seg: attend(q, k, v, laid_seg))
        q, k, v, g = (jax.device_put(apply_layout(x, layout, r), x_spec) for x in data)
        c_fwd, c_both = fwd.lower(q, k, v).compile(), fwd_bwd.lower(q, k, v, g).compile()
        row = {"impl": "ring sp=8" if u == 1 else f"2D ulysses={u} x sp={r}", "fwd_comm": communication(c_fwd.as_text()),
               "both_comm": communication(c_both.as_text())}
        row["fwd_cpu"], row["fwd_wall"], out = _timed(c_fwd, (q, k, v), repeats, min_cpu)
        row["both_cpu"], row["both_wall"], _ = _timed(c_both, (q, k, v, g), repeats, min_cpu)
        out = undo_layout(np.asarray(out), layout, r)
        if reference is None:
            reference = out
        else:
            row["err"] = float(np.linalg.norm(out - reference) / np.linalg.norm(reference))
        rows.append(row)
    return rows


def two_d_section(args) -> None:
    splits = [int(x) for x in args.ulysses.split(",")]
    print(f"\n2D sequence parallelism (Ulysses x ring) on {len(jax.devices())} devices: batch 1, {args.heads_2d} heads x "
          f"{args.head_dim_2d}, float32, causal, zigzag over the ring, block {args.block}. Communication per device per "
          "attention call (one layer), from the compiled HLO: MiB sent and sequential steps; err vs the pure ring")
    header = (f"{'tokens':>6} {'batch':<7} {'implementation':<22} {'fwd CPU-s':>9} {'wall':>6} {'MiB':>7} {'steps':>5} "
              f"{'f+b CPU-s':>9} {'wall':>6} {'MiB':>7} {'steps':>5} {'err':>8}")
    print(header)
    print("-" * len(header))
    for length in (int(x) for x in args.lengths_2d.split(",")):
        rng = np.random.default_rng(length)
        shape = (1, length, args.heads_2d, args.head_dim_2d)
        data = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
        for kind, seg in (("causal", np.ones((1, length), np.int32)),
                          ("packed", packed_segment_ids(length, args.docs)[None])):
            for row in two_d_rows(seg, data, args.block, splits, args.repeats, args.min_cpu):
                f, b = row["fwd_comm"], row["both_comm"]
                print(f"{length:>6} {kind:<7} {row['impl']:<22} {row['fwd_cpu']:9.2f} {row['fwd_wall']:6.2f} "
                      f"{f.bytes_sent / MIB:7.2f} {f.steps:>5} {row['both_cpu']:9.2f} {row['both_wall']:6.2f} "
                      f"{b.bytes_sent / MIB:7.2f} {b.steps:>5} {_fmt(row, 'err', '8.1e')}", flush=True)


def sharded_segment_ids_check(mesh, seg, data, block, ringpkg) -> str:
    """The reference package's failure mode: segment ids sharded like q/k/v instead of replicated."""
    n = mesh.shape["sp"]
    chunk = min(block, seg.shape[1] // n)
    kwargs = dict(causal_block_size=1, deterministic=True, dropout_rng=None, attn_pdrop=0.0, query_chunk_size=chunk,
                  key_chunk_size=chunk, dtype=jnp.float32, policy=jax.checkpoint_policies.nothing_saveable,
                  precision=None, prevent_cse=True)
    pkg = jax.shard_map(
        functools.partial(ringpkg, axis_name="sp", float32_logits=True, cache_idx=None, blockwise_kwargs=kwargs),
        mesh=mesh, in_specs=(P(None, "sp", None, None),) * 3 + (None, P(None, "sp")),
        out_specs=P(None, "sp", None, None), check_vma=False,
    )
    q, k, v = (jnp.asarray(x) for x in data[:3])
    ref = np.asarray(jax.jit(dense_attention)(q, k, v, jnp.asarray(seg), jnp.asarray(seg)))
    err = lambda out: float(np.linalg.norm(out - ref) / np.linalg.norm(ref))  # noqa: E731
    theirs = np.asarray(jax.jit(pkg)(q, k, v, None, jnp.asarray(seg)))
    laid = [jnp.asarray(apply_layout(x, "zigzag", n)) for x in (*data[:3], seg)]
    ours = undo_layout(np.asarray(ring_attention(*laid, mesh=mesh, layout="zigzag", block_q=block, block_k=block)),
                       "zigzag", n)
    return f"relative error vs dense: ringattention pkg {err(theirs):.2e}, lwmkit {err(ours):.2e}"


def _fmt(row: dict, key: str, spec: str) -> str:
    return format(row[key], spec) if key in row else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lengths", default="4096,8192,16384")
    ap.add_argument("--devices", default="4,8")
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--block", type=int, default=128, help="query/key block (chunk) size of both ring implementations")
    ap.add_argument("--docs", type=int, default=32, help="documents in the packed row")
    ap.add_argument("--repeats", type=int, default=2, help="timed calls per row, at least")
    ap.add_argument("--min-cpu", type=float, default=1.0, help="CPU-seconds per row, at least")
    ap.add_argument("--dense-max-gib", type=float, default=4.0)
    ap.add_argument("--ringpkg", default="/tmp/ringpkg", help="pip --target directory holding ringattention")
    ap.add_argument("--no-package", action="store_true", help="leave the ringattention package out")
    ap.add_argument("--sections", default="1d,work,2d", help="which tables: 1d (ring vs package vs dense), work, 2d")
    ap.add_argument("--lengths-2d", default="8192,16384")
    ap.add_argument("--ulysses", default="1,2,4,8", help="Ulysses sizes of the 2d section (1 = the pure ring)")
    ap.add_argument("--heads-2d", type=int, default=8, help="heads in the 2d section (Ulysses splits them)")
    ap.add_argument("--head-dim-2d", type=int, default=32)
    args = ap.parse_args()

    sections = set(args.sections.split(","))
    lengths = [int(x) for x in args.lengths.split(",")]
    device_counts = [int(x) for x in args.devices.split(",")]
    if "1d" in sections:
        one_d_section(args, lengths, device_counts)
    if "work" in sections:
        work_section(args, lengths, device_counts)
    if "2d" in sections:
        two_d_section(args)


def one_d_section(args, lengths: list[int], device_counts: list[int]) -> None:
    ringpkg = None if args.no_package else load_ringattention(args.ringpkg)
    print(f"jax {jax.__version__}, {len(jax.devices())} virtual CPU devices on {os.cpu_count()} cores; "
          f"batch 1, {args.heads} heads x {args.head_dim}, float32, causal, block {args.block}; per call: mean of >= "
          f"{args.repeats} calls and >= {args.min_cpu} CPU-s after a warm-up")
    header = (f"{'dev':>3} {'tokens':>6} {'batch':<7} {'implementation':<21} {'fwd CPU-s':>9} {'wall':>6} {'MiB/dev':>8} "
              f"{'f+b CPU-s':>9} {'wall':>6} {'MiB/dev':>8} {'err':>8}")
    print(header)
    print("-" * len(header))
    results = {}
    for n in device_counts:
        mesh = jax.make_mesh((n,), ("sp",), axis_types=(AxisType.Explicit,), devices=jax.devices()[:n])
        for length in lengths:
            rng = np.random.default_rng(length)
            shape = (1, length, args.heads, args.head_dim)
            data = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]  # q, k, v, output cotangent
            for kind, seg in (("causal", np.ones((1, length), np.int32)),
                              ("packed", packed_segment_ids(length, args.docs)[None])):
                rows = run_case(mesh, seg, data, args.block, ringpkg, args.repeats, args.min_cpu, args.dense_max_gib)
                results[n, length, kind] = rows
                for row in rows:
                    print(f"{n:>3} {length:>6} {kind:<7} {row['impl']:<21} {_fmt(row, 'fwd_cpu', '9.2f')} "
                          f"{_fmt(row, 'fwd_wall', '6.2f')} {row['fwd_mib']:8.1f} {_fmt(row, 'both_cpu', '9.2f')} "
                          f"{_fmt(row, 'both_wall', '6.2f')} {row['both_mib']:8.1f} {_fmt(row, 'err', '8.1e')}"
                          + (f"  {row['note']}" if "note" in row else ""), flush=True)

    print("\nTargets")
    balance = {(n, length, kind, "zigzag"): zigzag_balance(n, length, kind, args) for n, length, kind in results}
    pick = lambda rows, name: next(r for r in rows if r["impl"].startswith(name))  # noqa: E731
    for (n, length, kind), rows in results.items():
        ours = pick(rows, "lwmkit")
        notes = []
        if ringpkg is not None and kind == "causal":
            pkg = pick(rows, "ringattention")
            notes.append(f"fwd {ours['fwd_cpu'] / pkg['fwd_cpu']:.2f}x, fwd+bwd {ours['both_cpu'] / pkg['both_cpu']:.2f}x "
                         "the package's CPU-s (target < 1)")
        if kind == "packed":
            full = pick(results[n, length, "causal"], "lwmkit")
            notes.append(f"packed/unpacked CPU-s fwd {ours['fwd_cpu'] / full['fwd_cpu']:.2f}, fwd+bwd "
                         f"{ours['both_cpu'] / full['both_cpu']:.2f} (target <= 0.3); zigzag busiest/average "
                         f"{balance[n, length, kind, 'zigzag']:.3f}")
        else:
            notes.append(f"zigzag busiest/average {balance[n, length, kind, 'zigzag']:.3f} (target <= 1.1)")
        print(f"{n} devices, {length} tokens, {kind}: " + "; ".join(notes))
    if ringpkg is not None:
        n, length = device_counts[0], lengths[0]
        mesh = jax.make_mesh((n,), ("sp",), axis_types=(AxisType.Auto,), devices=jax.devices()[:n])
        rng = np.random.default_rng(0)
        data = [rng.standard_normal((1, length, args.heads, args.head_dim)).astype(np.float32) for _ in range(3)]
        print(f"\nSegment ids sharded like q/k/v ({n} devices, {length} tokens, packed): "
              + sharded_segment_ids_check(mesh, packed_segment_ids(length, args.docs)[None], data, args.block, ringpkg))


def zigzag_balance(n: int, length: int, kind: str, args) -> float:
    seg = np.ones(length, np.int32) if kind == "causal" else packed_segment_ids(length, args.docs)
    return busiest_over_average(attention_work(seg, n, "zigzag", min(args.block, length // n // 2)))


def work_section(args, lengths: list[int], device_counts: list[int]) -> None:
    print("\nBlock-pair work (masked-out pairs count 0): pairs computed, and busiest device / average device,")
    print("per step (each ring step lasts as long as its busiest device; summed over steps) and in total")
    print(f"{'dev':>3} {'tokens':>6} {'batch':<7} {'layout':<10} {'pairs':>6} {'of all':>6} {'per step':>8} {'total':>6}")
    balance = {}
    for n in device_counts:
        for length in lengths:
            block = min(args.block, length // n // 2)
            everything = (length // block) ** 2
            for kind, seg in (("causal", np.ones(length, np.int32)), ("packed", packed_segment_ids(length, args.docs))):
                for lay in LAYOUTS + ROW_LAYOUTS:
                    work = attention_work(seg, n, lay, block)
                    per_device = work.sum(0)
                    balance[n, length, kind, lay] = busiest_over_average(work)
                    print(f"{n:>3} {length:>6} {kind:<7} {lay:<10} {int(work.sum()):>6} {work.sum() / everything:>6.3f} "
                          f"{balance[n, length, kind, lay]:>8.3f} {per_device.max() / per_device.mean():>6.3f}")

    print("\nTargets: packed rows of", args.docs, "documents, busiest/average per step, balanced (target <= 1.15) vs zigzag")
    for n in device_counts:
        for length in lengths:
            print(f"{n} devices, {length} tokens: balanced {balance[n, length, 'packed', 'balanced']:.3f}, "
                  f"zigzag {balance[n, length, 'packed', 'zigzag']:.3f}")


if __name__ == "__main__":
    main()
