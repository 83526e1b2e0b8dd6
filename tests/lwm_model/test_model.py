"""The LWM Flax model: config checks, masking, positions, scan/remat, vision head, loss, mesh, ring."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import PartitionSpec as P
from lwmkit.lwm_model.checkpoint import expected_shapes, unstack_layers
from lwmkit.lwm_model.config import LWMConfig, preset
from lwmkit.lwm_model.layout import restore_order, undo_layout
from lwmkit.lwm_model.loss import lwm_loss, make_loss_fn
from lwmkit.lwm_model.mesh import fit_spec, layout_batch, make_mesh, param_specs, shard_params
from lwmkit.lwm_model.model import LWM, forward, init_params
from lwmkit.packing.batches import shift_targets

TINY = preset("tiny")


def packed_batch(
    seed: int = 0, docs=((0, 10), (10, 24), (24, 29)), length: int = 32, rows: int = 2,
    vision_share: float = 0.4,
):
    """Rows of packed documents (spans [start, end)) with padding after them, random text/vision ids
    (about `vision_share` of the tokens vision)."""
    rng = np.random.default_rng(seed)
    seg = np.zeros((rows, length), np.int32)
    pos = np.zeros((rows, length), np.int32)
    for i, (a, b) in enumerate(docs, start=1):
        seg[:, a:b] = i
        pos[:, a:b] = np.arange(b - a)
    vision = (rng.random((rows, length)) < vision_share) & (seg > 0)
    tokens = np.where(
        vision,
        rng.integers(0, TINY.vision_codes, (rows, length)),
        rng.integers(3, TINY.vocab_size, (rows, length)),
    )
    record = dict(
        tokens=(tokens * (seg > 0)).astype(np.int32),
        vision_mask=vision,
        loss_weights=(seg > 0).astype(np.float32),
        tokens_segment_ids=seg,
        tokens_positions=pos,
    )
    return shift_targets(record)


@pytest.fixture(scope="module")
def params():
    return jax.jit(lambda: init_params(LWM(TINY), jax.random.key(0)))()


@pytest.fixture(scope="module")
def run():
    """Jitted forward of a config on a batch; one compilation per (config, shapes)."""
    fns = {}

    def call(params, batch, config=TINY, mesh=None):
        key = (config, mesh)
        if key not in fns:
            fns[key] = jax.jit(lambda p, b: forward(LWM(config, mesh), p, b))
        fields = ("tokens", "vision_mask", "tokens_segment_ids", "tokens_positions", "token_index")
        return fns[key](params, {k: batch[k] for k in fields if k in batch})

    return call


def test_config_rejects_bad_fields_naming_them():
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        preset("tiny", num_kv_heads=3)
    with pytest.raises(ValueError, match="attention_impl='flash'.*dense"):
        preset("tiny", attention_impl="flash")
    with pytest.raises(ValueError, match="vision_vocab_size=257"):
        preset("tiny", vision_vocab_size=257)
    with pytest.raises(ValueError, match="hidden_size=65"):
        preset("tiny", hidden_size=65)
    with pytest.raises(ValueError, match="unknown LWM preset 'huge'.*tiny"):
        preset("huge")
    with pytest.raises(ValueError, match="unknown fields"):
        LWMConfig.from_dict({**TINY.to_dict(), "heads": 3})
    assert LWMConfig.from_dict(TINY.to_dict()) == TINY


def test_7b_preset_has_llama2_shape_plus_vision_tables():
    config = preset("7b")
    shapes = expected_shapes(config)
    total = sum(int(np.prod(s)) for s, _ in shapes.values())
    llama2_7b = 6_738_415_616  # LLaMA-2 7B's published parameter count
    assert total == llama2_7b + 2 * 8448 * 4096  # + vision embedding and vision head
    assert shapes["transformer/h/scan_decoder/attention/wq/kernel"][0] == (32, 4096, 4096)
    assert shapes["transformer/h/scan_decoder/feed_forward/w1/kernel"][0] == (32, 4096, 11008)


def test_documents_never_see_each_other(params, run):
    batch = packed_batch()
    base = run(params, batch)
    changed = dict(batch)
    changed["tokens"] = batch["tokens"].copy()
    changed["tokens"][:, 10:24] = (
        changed["tokens"][:, 10:24] + 7
    ) % TINY.vocab_size  # document 2 only
    out = run(params, changed)
    for logits in ("text_logits", "vision_logits"):
        a, b = np.asarray(getattr(base, logits)), np.asarray(getattr(out, logits))
        np.testing.assert_array_equal(a[:, :10], b[:, :10])  # document 1
        np.testing.assert_array_equal(a[:, 24:29], b[:, 24:29])  # document 3
        assert np.abs(a[:, 10:24] - b[:, 10:24]).max() > 1e-3


def test_causal_a_token_never_sees_later_ones(params, run):
    batch = packed_batch(docs=((0, 32),))
    changed = dict(batch, tokens=batch["tokens"].copy())
    changed["tokens"][:, 20] = (changed["tokens"][:, 20] + 1) % TINY.vocab_size
    a, b = run(params, batch).text_logits, run(params, changed).text_logits
    np.testing.assert_array_equal(np.asarray(a)[:, :20], np.asarray(b)[:, :20])
    assert np.abs(np.asarray(a)[:, 20:] - np.asarray(b)[:, 20:]).max() > 1e-3


def test_positions_restart_so_a_document_reads_the_same_anywhere(params, run):
    packed = packed_batch(docs=((0, 11), (11, 25)), rows=1)
    alone = {k: np.zeros_like(v) for k, v in packed.items()}
    for k in alone:  # document 2 moved to the front of its own row, padding after it
        alone[k][:, :14] = packed[k][:, 11:25]
    alone["tokens_segment_ids"][:, :14] = 1
    a, b = run(params, packed), run(params, alone)
    np.testing.assert_allclose(
        np.asarray(a.text_logits)[:, 11:25], np.asarray(b.text_logits)[:, :14], atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(a.vision_logits)[:, 11:25], np.asarray(b.vision_logits)[:, :14], atol=1e-5
    )
    # RoPE is relative: positions counted on from the row start instead (no restart) change nothing
    # within a document, while distorting the distances between tokens does.
    running = dict(packed, tokens_positions=np.broadcast_to(np.arange(32, dtype=np.int32), (1, 32)))
    np.testing.assert_allclose(
        np.asarray(run(params, running).text_logits), np.asarray(a.text_logits), atol=1e-5
    )
    doubled = dict(packed, tokens_positions=packed["tokens_positions"] * 2)
    assert (
        np.abs(np.asarray(run(params, doubled).text_logits) - np.asarray(a.text_logits)).max()
        > 1e-3
    )


def test_vision_tokens_use_the_vision_embedding(params, run):
    batch = packed_batch(docs=((0, 32),), rows=1)
    batch["tokens"][0, 5], batch["vision_mask"][0, 5] = 9, True
    batch["tokens"][0, 6], batch["vision_mask"][0, 6] = 9, False
    base = np.asarray(run(params, batch).text_logits)
    flat = flatten_dict(params, sep="/")
    for table, changes in (("transformer/vte/embedding", 5), ("transformer/wte/embedding", 6)):
        edited = dict(flat)
        edited[table] = flat[table].at[9].add(1.0)
        out = np.asarray(run(unflatten_dict(edited, sep="/"), batch).text_logits)
        first = np.nonzero(np.abs(out - base).max(-1)[0] > 1e-4)[0][0]
        assert first == changes, (
            table,
            first,
        )  # the first token whose logits move is the one using that table


def test_scan_and_remat_match_unrolled_values_and_gradients(params, run):
    batch = packed_batch()
    unrolled_config = dataclasses.replace(TINY, scan_layers=False, remat_policy="none")
    unrolled = unflatten_dict(unstack_layers(flatten_dict(params, sep="/")), sep="/")
    a, b = run(params, batch), run(unrolled, batch, unrolled_config)
    np.testing.assert_allclose(np.asarray(a.text_logits), np.asarray(b.text_logits), atol=1e-5)
    ga = jax.jit(jax.grad(lambda p: make_loss_fn(LWM(TINY))(p, batch)[0]))(params)
    gb = jax.jit(jax.grad(lambda p: make_loss_fn(LWM(unrolled_config))(p, batch)[0]))(unrolled)
    ga = unstack_layers(flatten_dict(ga, sep="/"))
    for k, v in flatten_dict(gb, sep="/").items():
        np.testing.assert_allclose(np.asarray(ga[k]), np.asarray(v), atol=1e-6, err_msg=k)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_loss_is_half_vision_plus_half_text_by_hand(params, run):
    batch = packed_batch(seed=3)
    batch["target_loss_weights"] = batch["target_loss_weights"] * np.linspace(
        0.5, 2, 32, dtype=np.float32
    )
    out = run(params, batch)
    text_lp, vision_lp = (
        _log_softmax(np.asarray(out.text_logits, np.float64)),
        _log_softmax(np.asarray(out.vision_logits, np.float64)),
    )
    sums = {"text": [0.0, 0.0], "vision": [0.0, 0.0]}
    for r in range(2):
        for t in range(32):
            w = batch["target_loss_weights"][r, t]
            if w == 0:
                continue
            vision = batch["target_vision_mask"][r, t]
            lp = (vision_lp if vision else text_lp)[r, t, batch["targets"][r, t]]
            sums["vision" if vision else "text"][0] += -w * lp
            sums["vision" if vision else "text"][1] += w
    assert sums["text"][1] > 0 and sums["vision"][1] > 0
    text, vision = sums["text"][0] / sums["text"][1], sums["vision"][0] / sums["vision"][1]
    loss, metrics = lwm_loss(out, batch)
    np.testing.assert_allclose(float(loss), 0.5 * (text + vision), rtol=1e-5)
    np.testing.assert_allclose(float(metrics["vision_loss"]), vision, rtol=1e-5)
    tokens_loss, _ = lwm_loss(out, batch, mix="tokens")
    total = (sums["text"][0] + sums["vision"][0]) / (sums["text"][1] + sums["vision"][1])
    np.testing.assert_allclose(float(tokens_loss), total, rtol=1e-5)
    with pytest.raises(ValueError, match="mix='half'"):
        lwm_loss(out, batch, mix="half")


def test_text_only_model_has_no_vision_tables_and_only_text_loss(run):
    config = preset("tiny", vision=False, num_layers=1)
    p = jax.jit(lambda: init_params(LWM(config), jax.random.key(1)))()
    assert "vte" not in p["transformer"] and "vision_head" not in p
    batch = packed_batch(docs=((0, 16),), rows=1, vision_share=0.0)
    assert not batch["vision_mask"].any() and not batch["target_vision_mask"].any()
    out = run(p, batch, config)
    assert out.vision_logits is None
    loss, metrics = lwm_loss(out, batch)
    assert float(loss) == float(metrics["text_loss"]) > 0


def test_make_mesh_and_param_rules(params):
    mesh = make_mesh("1,2,1,4")
    assert dict(mesh.shape) == {"dp": 1, "fsdp": 2, "tp": 1, "sp": 4, "ulysses": 1}
    assert dict(make_mesh({"sp": -1}).shape)["sp"] == 8
    with pytest.raises(ValueError, match="need 6 devices"):
        make_mesh("1,3,2,1")
    with pytest.raises(ValueError, match="unknown axes"):
        make_mesh({"pp": 2})
    fsdp = ("fsdp", "sp", "ulysses")  # both sequence axes shard parameters too (ZeRO-style)
    specs = flatten_dict(param_specs(params), sep="/")
    assert specs["transformer/h/scan_decoder/attention/wq/kernel"] == P(None, fsdp, "tp")
    assert specs["transformer/h/scan_decoder/attention/wo/kernel"] == P(None, "tp", fsdp)
    assert specs["transformer/vte/embedding"] == P("tp", fsdp)
    assert specs["vision_head/kernel"] == P(fsdp, "tp")
    mesh2d = make_mesh("1,1,1,2,4")  # a fifth size: the Ulysses axis, innermost (neighbouring devices)
    assert dict(mesh2d.shape) == {"dp": 1, "fsdp": 1, "tp": 1, "sp": 2, "ulysses": 4}
    assert [d.id for d in mesh2d.devices[0, 0, 0, 1]] == [4, 5, 6, 7]
    assert flatten_dict(param_specs(params, mesh2d), sep="/")["vision_head/kernel"] == P(fsdp, "tp")
    with pytest.raises(ValueError, match="need 4 or 5 sizes"):
        make_mesh("1,1,1,2,2,2")
    assert specs["transformer/ln_f/kernel"] == P(None)
    # A mesh axis that does not divide its dimension is dropped there (replicated), not an error.
    assert fit_spec(P(("fsdp", "sp"), "tp"), (6, 4), mesh) == P("fsdp", "tp")
    assert fit_spec(P(("fsdp", "sp"), "tp"), (16, 4), mesh) == P(("fsdp", "sp"), "tp")


def test_sharded_forward_matches_single_device(params, run):
    mesh = make_mesh("2,2,2,1")  # the mesh where a tp-sharded hidden spec made XLA swap batch rows
    batch = packed_batch(rows=4)
    sharded = shard_params(params, mesh)
    wq = sharded["transformer"]["h"]["scan_decoder"]["attention"]["wq"]["kernel"]
    assert wq.sharding.spec == P(None, ("fsdp", "sp", "ulysses"), "tp")
    assert wq.addressable_shards[0].data.size == wq.size // (mesh.size // mesh.shape["dp"])
    a, b = run(params, batch), run(sharded, batch, TINY, mesh)
    np.testing.assert_allclose(np.asarray(a.text_logits), np.asarray(b.text_logits), atol=1e-5)
    np.testing.assert_allclose(np.asarray(a.vision_logits), np.asarray(b.vision_logits), atol=1e-5)


def test_ring_attention_model_matches_dense(params, run):
    # zigzag: the batch is reordered, so this also checks RoPE positions and causality travel with
    # the tokens (contiguous ring prefill is checked in test_generate.py).
    layout = "zigzag"
    mesh = make_mesh("1,2,1,4")
    ring = preset("tiny", attention_impl="ring", ring_layout=layout, ring_block_q=4, ring_block_k=4)
    batch = packed_batch(seed=5)
    dense = run(params, batch)
    laid = layout_batch(batch, layout, 4)
    out = run(shard_params(params, mesh), laid, ring, mesh)
    for name in ("text_logits", "vision_logits"):
        got = undo_layout(np.asarray(getattr(out, name)), layout, 4)
        np.testing.assert_allclose(got, np.asarray(getattr(dense, name)), atol=2e-5, err_msg=name)


@pytest.mark.parametrize("mesh_dims,layout", [("1,1,1,2,4", "balanced"), ("1,1,2,2,2", "zigzag")])
def test_2d_sequence_parallel_model_matches_dense(params, run, mesh_dims, layout):
    # Ulysses x ring: 4 heads over ulysses=4 (2 kv heads repeated), or over tp=2 x ulysses=2; the
    # "balanced" layout is chosen per row from the segment ids and undone with its token_index.
    mesh = make_mesh(mesh_dims)
    ring_size = mesh.shape["sp"]
    ring = preset("tiny", attention_impl="ring", ring_layout=layout, ring_block_q=4, ring_block_k=4)
    batch = packed_batch(seed=7, docs=((0, 3), (3, 17), (17, 18), (18, 27)))
    dense = run(params, batch)
    laid = layout_batch(batch, layout, ring_size, (4, 4))
    out = run(shard_params(params, mesh), laid, ring, mesh)
    for name in ("text_logits", "vision_logits"):
        got = restore_order(np.asarray(getattr(out, name)), laid["token_index"])
        np.testing.assert_allclose(got, np.asarray(getattr(dense, name)), atol=2e-5, err_msg=name)


def test_ring_without_a_mesh_is_an_error(params):
    with pytest.raises(ValueError, match="needs a mesh"):
        LWM(preset("tiny", attention_impl="ring")).apply(
            {"params": params}, jnp.zeros((1, 8), jnp.int32)
        )


@pytest.mark.slow
def test_ring_model_gradients_match_dense(params):
    # The ring's custom backward pass inside the scanned, rematerialised layers (~10 s of compiling).
    mesh = make_mesh("1,2,1,4")
    ring = preset(
        "tiny", attention_impl="ring", ring_layout="zigzag", ring_block_q=4, ring_block_k=4
    )
    batch = packed_batch(seed=6)
    g_ring = jax.jit(
        jax.grad(lambda p: make_loss_fn(LWM(ring, mesh))(p, layout_batch(batch, "zigzag", 4))[0])
    )(params)
    g_dense = jax.jit(jax.grad(lambda p: make_loss_fn(LWM(TINY))(p, batch)[0]))(params)
    for k, v in flatten_dict(g_dense, sep="/").items():
        np.testing.assert_allclose(
            np.asarray(flatten_dict(g_ring, sep="/")[k]), np.asarray(v), atol=2e-6, err_msg=k
        )
