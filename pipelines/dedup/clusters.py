"""Connected components of the verified near-duplicate edges, and one survivor per component.

The components are found by a union-find over the edge set, run as a Beam `CombineFn`: each worker
unions the edges of its bundles, the partial forests are merged, and one worker extracts the
components. This is one-worker work on purpose: after verification the edges join only documents
that are near-duplicates (a few per cent of a corpus, not all pairs), and an edge costs two keys
and two sizes, so ten million duplicate documents fit in about a gigabyte. (An iterative
large-star/small-star job would scale further at the price of a shuffle per round; a corpus whose
duplicates outgrow one worker's memory needs it.)

The result does not depend on the order of the edges or on how they were split between workers:
components are sets, and the survivor of each is chosen by a total order, the largest `size` (the
longest book, the biggest image, the longest video), then the smallest key.

Example, edges a-b, b-c and d-e, sizes a=10, b=30, c=30, d=5, e=5:
    >>> survivors(components([("a", 10, "b", 30), ("b", 30, "c", 30), ("d", 5, "e", 5)]))
    [('a', 'b', 3), ('c', 'b', 3), ('e', 'd', 2)]          # (removed, kept, cluster size)
"""

from __future__ import annotations

from collections.abc import Iterable

import apache_beam as beam

Edge = tuple[str, int, str, int]  # (key a, size a, key b, size b)


class UnionFind:
    """Union-find over string keys that remembers each key's size."""

    def __init__(self):
        self.parent: dict[str, str] = {}
        self.size: dict[str, int] = {}

    def find(self, x: str) -> str:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def add(self, key: str, size: int) -> None:
        if key not in self.parent:
            self.parent[key] = key
        self.size[key] = size

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # Which root wins does not matter for the output (components are sets); min keeps it stable.
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo

    def add_edge(self, edge: Edge) -> None:
        a, size_a, b, size_b = edge
        self.add(a, size_a)
        self.add(b, size_b)
        self.union(a, b)

    def merge(self, other: UnionFind) -> None:
        for key, size in other.size.items():
            self.add(key, size)
        for key in other.parent:
            self.union(key, other.find(key))

    def groups(self) -> list[list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {}
        for key in self.parent:
            out.setdefault(self.find(key), []).append((key, self.size[key]))
        return [sorted(g) for g in out.values()]


def components(edges: Iterable[Edge]) -> list[list[tuple[str, int]]]:
    """The connected components of `edges`, each a sorted list of (key, size)."""
    uf = UnionFind()
    for edge in edges:
        uf.add_edge(edge)
    return uf.groups()


def survivors(groups: Iterable[list[tuple[str, int]]]) -> list[tuple[str, str, int]]:
    """(removed key, kept key, cluster size) for every non-survivor, sorted by removed key."""
    out = []
    for group in groups:
        kept = min(group, key=lambda ks: (-ks[1], ks[0]))[0]
        out += [(key, kept, len(group)) for key, _ in group if key != kept]
    return sorted(out)


class ComponentsFn(beam.CombineFn):
    """Edges -> sorted (removed, kept, cluster size) list; see the module docstring."""

    def create_accumulator(self) -> UnionFind:
        return UnionFind()

    def add_input(self, acc: UnionFind, edge: Edge) -> UnionFind:
        acc.add_edge(edge)
        return acc

    def merge_accumulators(self, accs: Iterable[UnionFind]) -> UnionFind:
        accs = iter(accs)
        first = next(accs)
        for other in accs:
            first.merge(other)
        return first

    def extract_output(self, acc: UnionFind) -> list[tuple[str, str, int]]:
        return survivors(acc.groups())
