"""What a compiled XLA program communicates, read from its HLO text: bytes each device sends, and steps.

`communication(compiled.as_text())` walks the entry computation and every computation it calls
(while bodies times their known trip count, conditionals' most expensive branch) and adds up:
  - bytes sent per device by each collective, from its result shape and replica group size g:
      collective-permute: the whole buffer; all-to-all: (g-1)/g of it (one piece stays home);
      all-gather: its own piece to g-1 peers, (g-1)/g of the gathered result;
      all-reduce: 2 (g-1)/g of the buffer (a ring reduce-scatter then all-gather);
      reduce-scatter: (g-1) x its result;
  - sequential communication steps: the longest chain of collectives through the data
    dependencies (collectives that do not depend on each other, like the k and v ppermutes of one
    ring step or the q, k, v all-to-alls, count once); a while loop contributes its trip count
    times its body's chain.
Async pairs (`-start` / `-done`) count at the start. Used by bench/ring_attention.py.
"""

from __future__ import annotations

import dataclasses
import re

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
          "f64": 8, "s64": 8, "u64": 8}
_SHAPE = re.compile(r"\b(" + "|".join(_BYTES) + r")\[([0-9,]*)\]")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%(?P<name>[^\s=]+) = (?P<type>.+?) (?P<op>[a-z][a-z0-9-]*)\((?P<args>[^)]*)\)"
                    r"(?P<attrs>.*)$")
_HEADER = re.compile(r"^(?:ENTRY\s+)?%(?P<name>[^\s(]+)\s")
_COLLECTIVES = ("all-to-all", "collective-permute", "all-gather", "all-reduce", "reduce-scatter")


@dataclasses.dataclass(frozen=True)
class Communication:
    """Per device: bytes sent, sequential communication steps, and collectives run (each counted per run)."""

    bytes_sent: float
    steps: int
    collectives: int


def _bytes(type_str: str) -> int:
    total = 0
    for dtype, dims in _SHAPE.findall(type_str):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _BYTES[dtype]
    return total


def _group_size(attrs: str) -> int:
    m = re.search(r"replica_groups=\{\{([0-9,]*)\}", attrs)
    if m:
        return len(m.group(1).split(","))
    m = re.search(r"replica_groups=\[(\d+),(\d+)\]", attrs)  # iota form [groups, size]<=[devices]
    return int(m.group(2)) if m else 1


def _sent(op: str, type_str: str, attrs: str) -> float:
    size, g = _bytes(type_str), _group_size(attrs)
    if op == "collective-permute":
        return float(size)
    if op in ("all-to-all", "all-gather"):
        return size * (g - 1) / g
    if op == "all-reduce":
        return 2.0 * size * (g - 1) / g
    return float(size * (g - 1))  # reduce-scatter


def _computations(hlo: str) -> tuple[dict[str, list[dict]], str]:
    comps: dict[str, list[dict]] = {}
    entry, current = "", None
    for line in hlo.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m and line.rstrip().endswith("{"):
                current = m.group("name")
                comps[current] = []
                entry = current if line.startswith("ENTRY") else entry
            continue
        if line.startswith("}"):
            current = None
            continue
        m = _INSTR.match(line)
        if m:
            comps[current].append(m.groupdict())
    return comps, entry


def communication(hlo: str) -> Communication:
    """Bytes sent per device, sequential communication steps and collectives of a compiled program's HLO text."""
    comps, entry = _computations(hlo)
    memo: dict[str, tuple[float, int, int]] = {}

    def walk(name: str) -> tuple[float, int, int]:
        if name in memo:
            return memo[name]
        memo[name] = (0.0, 0, 0)  # no recursion in HLO; guards a malformed text
        sent, count, depth = 0.0, 0, {}
        for ins in comps.get(name, []):
            op, attrs = ins["op"], ins["attrs"]
            base = op.removesuffix("-start")
            own_sent, own_steps, own_count = 0.0, 0, 0
            if base in _COLLECTIVES and not op.endswith("-done"):
                own_sent, own_steps, own_count = _sent(base, ins["type"], attrs), 1, 1
            elif op == "while":
                body = re.search(r"body=%([^\s,]+)", attrs).group(1)
                trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
                times = int(trip.group(1)) if trip else 1
                s, st, c = walk(body)
                own_sent, own_steps, own_count = s * times, st * times, c * times
            else:
                called = re.findall(r"(?:calls|to_apply|branch_computations)=\{?([^}]*?)\}?(?:,\s*[a-z_]+=|$)", attrs)
                names = [n.strip().lstrip("%") for group in called for n in group.split(",") if n.strip()]
                results = [walk(n) for n in names if n in comps]
                if results:
                    own_sent = max(r[0] for r in results)
                    own_steps = max(r[1] for r in results)
                    own_count = max(r[2] for r in results)
            before = max((depth.get(a, 0) for a in re.findall(r"%([^\s,)]+)", ins["args"])), default=0)
            depth[ins["name"]] = before + own_steps
            sent, count = sent + own_sent, count + own_count
        memo[name] = (sent, max(depth.values(), default=0), count)
        return memo[name]

    sent, steps, count = walk(entry)
    return Communication(sent, steps, count)
