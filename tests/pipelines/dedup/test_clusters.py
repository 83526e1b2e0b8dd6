import random

from lwmkit.pipelines.dedup.clusters import ComponentsFn, UnionFind, components, survivors

EDGES = [("a", 10, "b", 30), ("b", 30, "c", 30), ("d", 5, "e", 5), ("f", 1, "g", 2), ("g", 2, "h", 1), ("h", 1, "f", 1)]


def test_survivor_is_the_largest_then_the_smallest_key():
    assert survivors(components(EDGES)) == [
        ("a", "b", 3), ("c", "b", 3), ("e", "d", 2), ("f", "g", 3), ("h", "g", 3)]


def test_result_ignores_edge_order_direction_and_partitioning():
    want = survivors(components(EDGES))
    rng = random.Random(0)
    for _ in range(20):
        edges = [(b, sb, a, sa) if rng.random() < 0.5 else (a, sa, b, sb) for a, sa, b, sb in EDGES]
        rng.shuffle(edges)
        cut = rng.randint(0, len(edges))
        fn = ComponentsFn()
        parts = [fn.create_accumulator(), fn.create_accumulator()]
        for e in edges[:cut]:
            fn.add_input(parts[0], e)
        for e in edges[cut:]:
            fn.add_input(parts[1], e)
        order = parts if rng.random() < 0.5 else parts[::-1]
        assert fn.extract_output(fn.merge_accumulators(order)) == want


def test_long_chain_is_one_component():
    uf = UnionFind()
    for i in range(2000):
        uf.add_edge((f"k{i:05d}", 1, f"k{i + 1:05d}", 1))
    (group,) = uf.groups()
    assert len(group) == 2001
