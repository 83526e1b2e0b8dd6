"""The "balanced" ring layout: per packed row, which pieces of which documents each ring device holds.

Zigzag balances causal attention over one document filling the row; on packed rows the documents
decide the work (masked-out block pairs are skipped), and zigzag leaves the busiest device with
1.3-1.9x the average at 8 devices. This layout is chosen row by row from the segment ids:

  1. The row is cut into units of `unit` tokens in their ORIGINAL order (a multiple of the
     ring's block sizes, so every block the kernel sees is a run of consecutive original tokens:
     its segment ids and token indices, and so the block pairs it computes, do not depend on
     where the unit goes). Units are whole documents, pieces of one, or several short ones.
  2. The work between units is exact: for every (query unit, key unit) the number of block pairs
     `block_pair_mask` keeps (causal, segment-masked, padding free), i.e. what the kernel runs.
  3. Units are assigned to devices, T / (ring_size * unit) each, to minimise what a ring pass
     costs: at step t device r computes its queries against the keys of device r - t, every step
     lasts as long as its busiest device, so the cost is sum over steps of max over devices.
     The assignment starts from the best of the contiguous, zigzag and unit-striped ones and is
     improved by simulated annealing over swaps of two units (seeded: the same row always gives
     the same layout); the result is never worse than its start.
  4. Each device's units keep their original order: laid-out row = device 0's tokens, device 1's...

Example (T = 16, 2 devices, unit 2; digits are original token indices):

    perm = balanced_permutation(segment_ids, 2, 2)   # e.g. [0 1 6 7 8 9 14 15 | 2 3 4 5 10 11 12 13]
    laid = segment_ids[perm]; token_index = perm    # what `layout_batch` hands the model
    restore_order(out, perm) puts outputs back in the original order.
"""

from __future__ import annotations

import math

import numpy as np
from lwmkit.lwm_model.layout import block_pair_mask, check_layout, layout_permutation

BALANCED = "balanced"
_TEMP = 0.04
_MAX_UNITS = 512  # units per row at most (the unit grows in block multiples beyond): bounds the search


def _pairs(seg: np.ndarray, unit: int, block_q: int, block_k: int, causal: bool):
    """(query unit, key unit, block pairs) of every unit pair holding work, in original order."""
    tok = np.arange(seg.shape[0])
    mask = block_pair_mask(seg, tok, seg, tok, block_q, block_k, causal)  # [T/bq, T/bk]
    nu = seg.shape[0] // unit
    per_unit = mask.reshape(nu, unit // block_q, nu, unit // block_k).sum(axis=(1, 3))  # [nu, nu]
    q, k = np.nonzero(per_unit)
    return q, k, per_unit[q, k].astype(np.float64)


def _cost(work: np.ndarray) -> float:
    return float(work.max(1).sum())


def _work(assign: np.ndarray, q, k, w, ring: int) -> np.ndarray:
    """[step, device] block pairs of an assignment (unit -> device)."""
    flat = ((assign[q] - assign[k]) % ring) * ring + assign[q]
    return np.bincount(flat, w, ring * ring).reshape(ring, ring)


def _starts(nu: int, ring: int) -> list[np.ndarray]:
    """unit -> device of the contiguous, zigzag (when units allow) and unit-striped layouts."""
    per = nu // ring
    out = [np.arange(nu) // per, np.arange(nu) % ring]
    if nu % (2 * ring) == 0:
        zig = np.empty(nu, np.int64)
        zig[layout_permutation(nu, "zigzag", ring)] = np.arange(nu) // per
        out.insert(1, zig)
    return out


def _anneal(assign: np.ndarray, q, k, w, ring: int, iterations: int, seed: int) -> np.ndarray:
    """Simulated annealing over swaps of two units' devices; returns the best assignment seen."""
    nu = assign.shape[0]
    touching = [np.flatnonzero((q == u) | (k == u)) for u in range(nu)]
    work = _work(assign, q, k, w, ring)
    cost = best = _cost(work)
    best_assign = assign.copy()
    rng = np.random.default_rng(seed)
    swaps = rng.integers(nu, size=(iterations, 2))
    accept = rng.random(iterations)
    start_temp = max(best, 1.0) / ring * _TEMP  # a few per cent of one device's share
    for it, (i, j) in enumerate(swaps):
        if assign[i] == assign[j]:
            continue
        idx = np.union1d(touching[i], touching[j])
        qi, ki, wi = q[idx], k[idx], w[idx]
        old = ((assign[qi] - assign[ki]) % ring) * ring + assign[qi]
        assign[i], assign[j] = assign[j], assign[i]
        new = ((assign[qi] - assign[ki]) % ring) * ring + assign[qi]
        trial = work + (np.bincount(new, wi, ring * ring) - np.bincount(old, wi, ring * ring)).reshape(ring, ring)
        trial_cost = _cost(trial)
        temp = start_temp * (1.0 - it / iterations) + 1e-9
        if trial_cost <= cost or accept[it] < math.exp((cost - trial_cost) / temp):
            work, cost = trial, trial_cost
            if cost < best - 1e-9:
                best, best_assign = cost, assign.copy()
        else:
            assign[i], assign[j] = assign[j], assign[i]
    return best_assign


def balanced_permutation(
    segment_ids,
    ring_size: int,
    block: int | tuple[int, int],
    causal: bool = True,
    *,
    unit: int | None = None,
    iterations: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The balanced layout of one row: perm with laid_out[j] = original[perm[j]].

    Args:
        segment_ids: int [T] in original order (0 = padding).
        ring_size: devices on the ring.
        block: the ring kernel's block size, or (block_q, block_k).
        causal: causal attention (the work differs).
        unit: tokens moved together (default: lcm of the block sizes, doubled while a row would
            hold more than 512 units); must be a multiple of both block sizes and divide T / ring_size.
        iterations: annealing steps (default: 8 x units^2, between 2,000 and 40,000).
        seed: the annealing's random seed (fixed: the same row gives the same layout).

    Returns:
        int64 [T], a permutation of 0..T-1 (the row's `token_index`).

    Raises:
        ValueError: sizes that do not split (naming them).
    """
    seg = np.asarray(segment_ids)
    if seg.ndim != 1:
        raise ValueError(f"segment_ids {seg.shape}: one row [T] (balanced_permutations takes [B, T])")
    length = seg.shape[0]
    check_layout(BALANCED, length, ring_size)
    block_q, block_k = (block, block) if isinstance(block, int) else block
    local = length // ring_size
    if unit is None:
        unit = math.lcm(block_q, block_k)
        while length // unit > _MAX_UNITS and local % (2 * unit) == 0:
            unit *= 2
    if unit < 1 or unit % block_q or unit % block_k or local % unit:
        raise ValueError(
            f"unit={unit} must be a multiple of the blocks ({block_q}, {block_k}) and divide the {local} tokens "
            f"each of the {ring_size} ring devices holds (T={length})"
        )
    nu = length // unit
    q, k, w = _pairs(seg, unit, block_q, block_k, causal)
    if ring_size == 1 or not len(w):
        return np.arange(length)
    starts = _starts(nu, ring_size)
    assign = min(starts, key=lambda a: _cost(_work(a, q, k, w, ring_size))).copy()
    if iterations is None:
        iterations = int(min(max(8 * nu * nu, 2000), 40000))
    assign = _anneal(assign, q, k, w, ring_size, iterations, seed)
    units = np.argsort(assign, kind="stable")  # device by device, original order within each
    return (units[:, None] * unit + np.arange(unit)).reshape(-1)


def balanced_permutations(
    segment_ids, ring_size: int, block: int | tuple[int, int], causal: bool = True, **kwargs
) -> np.ndarray:
    """`balanced_permutation` of every row of segment ids [B, T] -> int64 [B, T]."""
    seg = np.atleast_2d(np.asarray(segment_ids))
    return np.stack([balanced_permutation(row, ring_size, block, causal, **kwargs) for row in seg])
