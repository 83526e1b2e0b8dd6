"""One optimiser step on the mesh: optax AdamW, LWM's loss over the loader's fields, gradient accumulation.

The step takes a loader batch as global arrays (`lwmkit.packing.device_arrays.to_global_arrays`) and
passes everything the packed records carry: `tokens_segment_ids` (documents never attend to each
other), `tokens_positions` (RoPE restarts per document), `vision_mask`, and the targets with their
`target_loss_weights` and `target_vision_mask`. With `mix="lwm"` the loss is LWM's
0.5 x vision loss + 0.5 x text loss, each a weighted mean over its own targets; `mix="tokens"` is
one weighted mean over all targets (see `loss.py`).

Gradient accumulation is exact: the batch's text and vision weight totals are summed first, and
every micro-batch's loss is its weighted NLL divided by those totals, so the micro-batch losses
(and gradients) add up to the full batch's. Row r goes to micro-batch r % grad_accum, which keeps
each device's rows on that device.

    batch [8 rows, T], grad_accum=2 -> micro-batches rows (0, 2, 4, 6) and (1, 3, 5, 7), each [4, T]
    loss = sum over micro-batches of 0.5 * (text_nll_sum / text_weight + vision_nll_sum / vision_weight)

The state is a dict {"params", "opt_state", "step"}; `train_state_shardings` places it on the mesh
(optimiser moments like their parameters, counters replicated).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from lwmkit.lwm_model.config import LWMConfig
from lwmkit.lwm_model.loss import MIXES, weighted_cross_entropy
from lwmkit.lwm_model.mesh import param_shardings
from lwmkit.lwm_model.model import LWM, forward
from lwmkit.lwm_model.train_config import OptimizerConfig

# Fields of a loader batch the step reads (plus `token_index` when a ring layout reordered it).
STEP_FIELDS = (
    "tokens",
    "vision_mask",
    "tokens_segment_ids",
    "tokens_positions",
    "targets",
    "target_loss_weights",
    "target_vision_mask",
)
_NO_DECAY = re.compile(r"(norm|ln_f)/kernel$")


def learning_rate_schedule(opt: OptimizerConfig, steps: int) -> optax.Schedule:
    """The learning rate of each step: linear warmup to `lr`, then constant or cosine to `end_lr`.

    Step n (counting from 0) uses the rate at n + 1, so the first step already learns (LWM's
    warmup starts at 0 and wastes it).
    """
    if opt.schedule == "cosine":
        base = optax.warmup_cosine_decay_schedule(
            0.0, opt.lr, opt.warmup_steps, max(opt.decay_steps or steps, opt.warmup_steps + 1),
            opt.lr / 10 if opt.end_lr is None else opt.end_lr,
        )
    elif opt.warmup_steps:
        base = optax.join_schedules(
            [optax.linear_schedule(0.0, opt.lr, opt.warmup_steps), optax.constant_schedule(opt.lr)],
            [opt.warmup_steps],
        )
    else:
        base = optax.constant_schedule(opt.lr)
    return lambda count: base(count + 1)


def make_optimizer(opt: OptimizerConfig, steps: int) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW; norm scales get no weight decay."""

    def decay_mask(params):
        flat = flatten_dict(params, sep="/")
        return unflatten_dict({k: not _NO_DECAY.search(k) for k in flat}, sep="/")

    adamw = optax.adamw(learning_rate_schedule(opt, steps), opt.b1, opt.b2, opt.eps,
                        weight_decay=opt.weight_decay, mask=decay_mask)
    return adamw if opt.clip_norm is None else optax.chain(optax.clip_by_global_norm(opt.clip_norm), adamw)


def train_state_shardings(abstract_state: Mapping[str, Any], tx: optax.GradientTransformation, mesh: Mesh) -> Any:
    """NamedShardings of {"params", "opt_state", "step"}: moments like their parameters, the rest replicated."""
    replicated = NamedSharding(mesh, P())
    params = param_shardings(abstract_state["params"], mesh)
    opt_state = optax.tree_map_params(
        tx, lambda _, s: s, abstract_state["opt_state"], params, transform_non_params=lambda _: replicated
    )
    return {"params": params, "opt_state": opt_state, "step": replicated}


def init_state(params: Any, tx: optax.GradientTransformation) -> dict[str, Any]:
    """A fresh train state around `params` (optimiser moments 0, step 0)."""
    return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}


def weight_totals(batch: Mapping[str, Any], vision: bool) -> tuple[jax.Array, jax.Array]:
    """Text and vision target weight of a whole batch: the denominators of LWM's two means."""
    w = jnp.asarray(batch["target_loss_weights"], jnp.float32)
    is_vision = jnp.asarray(batch["target_vision_mask"], bool) & vision
    return jnp.sum(w * ~is_vision), jnp.sum(w * is_vision)


def micro_loss(model: LWM, params: Any, micro: Mapping[str, Any], totals: tuple[jax.Array, jax.Array],
               mix: str) -> tuple[jax.Array, dict[str, jax.Array]]:
    """A micro-batch's share of the batch loss (its NLL over the batch's weight totals), and its sums."""
    out = forward(model, params, dict(micro))
    targets = micro["targets"]
    w = jnp.asarray(micro["target_loss_weights"], jnp.float32)
    is_vision = jnp.asarray(micro["target_vision_mask"], bool) & (out.vision_logits is not None)
    t_nll, t_w, t_ok = weighted_cross_entropy(out.text_logits, jnp.where(is_vision, 0, targets), w * ~is_vision)
    sums = {"text_nll": t_nll, "text_correct": t_ok}
    v_nll = jnp.zeros((), jnp.float32)
    if out.vision_logits is not None:
        v_nll, _, v_ok = weighted_cross_entropy(out.vision_logits, jnp.where(is_vision, targets, 0), w * is_vision)
        sums.update(vision_nll=v_nll, vision_correct=v_ok)
    text_total, vision_total = totals
    if out.vision_logits is None:
        loss = t_nll / jnp.maximum(text_total, 1e-10)
    elif mix == "lwm":
        loss = 0.5 * (t_nll / jnp.maximum(text_total, 1e-10) + v_nll / jnp.maximum(vision_total, 1e-10))
    else:
        loss = (t_nll + v_nll) / jnp.maximum(text_total + vision_total, 1e-10)
    return loss, sums


def _split(x: jax.Array, accum: int) -> jax.Array:
    # [rows, ...] -> [accum, rows / accum, ...] with row r in micro-batch r % accum (no cross-device move)
    return jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)


def loss_and_grads(model: LWM, params: Any, batch: Mapping[str, Any], mix: str, grad_accum: int = 1):
    """(loss, sums, grads) of a batch, accumulated over `grad_accum` micro-batches."""
    totals = weight_totals(batch, model.config.vision)
    grad_fn = jax.value_and_grad(lambda p, m: micro_loss(model, p, m, totals, mix), has_aux=True)
    if grad_accum == 1:
        (loss, sums), grads = grad_fn(params, batch)
        return loss, sums, grads, totals
    micro = {k: _split(v, grad_accum) for k, v in batch.items()}

    def body(carry, m):
        (loss, sums), grads = grad_fn(params, m)
        acc_loss, acc_sums, acc_grads = carry
        return (acc_loss + loss, jax.tree.map(jnp.add, acc_sums, sums), jax.tree.map(jnp.add, acc_grads, grads)), None

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32 if p.dtype == jnp.bfloat16 else p.dtype), params)
    first = jax.eval_shape(lambda: grad_fn(params, {k: v[0] for k, v in micro.items()})[0][1])
    init = (jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), first), zeros)
    (loss, sums, grads), _ = jax.lax.scan(body, init, micro)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)
    return loss, sums, grads, totals


@functools.lru_cache(maxsize=16)
def build_train_step(config: LWMConfig, mesh: Mesh, opt: OptimizerConfig, steps: int, mix: str = "lwm",
                     grad_accum: int = 1) -> tuple[Callable, optax.GradientTransformation, Any]:
    """The jitted step `step(state, batch) -> (state, metrics)`, its optimiser, and the state's shardings.

    Cached per (model config, mesh, optimiser, steps, mix, grad_accum), so a resumed or repeated
    run in the same process reuses the compiled step.

    Metrics: loss, text_loss / vision_loss (each over the batch's own weighted targets),
    text_accuracy / vision_accuracy, text_weight / vision_weight, grad_norm, param_norm, lr.
    """
    if mix not in MIXES:
        raise ValueError(f"mix={mix!r}: must be one of {list(MIXES)}")
    model = LWM(config, mesh)
    tx = make_optimizer(opt, steps)
    schedule = learning_rate_schedule(opt, steps)
    abstract = jax.eval_shape(lambda: init_state(_abstract_params(config), tx))
    shardings = train_state_shardings(abstract, tx, mesh)

    def step(state, batch):
        batch = {k: batch[k] for k in (*STEP_FIELDS, "token_index") if k in batch}
        loss, sums, grads, (text_w, vision_w) = loss_and_grads(model, state["params"], batch, mix, grad_accum)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            "text_loss": sums["text_nll"] / jnp.maximum(text_w, 1e-10),
            "text_accuracy": sums["text_correct"] / jnp.maximum(text_w, 1e-10),
            "text_weight": text_w,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "lr": schedule(state["step"]),
        }
        if "vision_nll" in sums:
            metrics.update(vision_loss=sums["vision_nll"] / jnp.maximum(vision_w, 1e-10),
                           vision_accuracy=sums["vision_correct"] / jnp.maximum(vision_w, 1e-10),
                           vision_weight=vision_w)
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    # CPU arrays can alias host memory that an async checkpoint is still reading: donate elsewhere only.
    donate = (0,) if mesh.devices.flat[0].platform != "cpu" else ()
    replicated = NamedSharding(mesh, P())
    jitted = jax.jit(step, in_shardings=(shardings, None), out_shardings=(shardings, replicated),
                     donate_argnums=donate)
    return jitted, tx, shardings


def _abstract_params(config: LWMConfig) -> Any:
    return init_model_params(config, jax.random.key(0))


def init_model_params(config: LWMConfig, rng: jax.Array) -> Any:
    """Random parameters of `config` (attention never changes the parameters, so dense builds them)."""
    from lwmkit.lwm_model.model import init_params

    return init_params(LWM(dataclasses.replace(config, attention_impl="dense")), rng)


def abstract_train_state(config: LWMConfig, mesh: Mesh, opt: OptimizerConfig, steps: int) -> Any:
    """ShapeDtypeStructs with shardings of the train state (the target of a checkpoint restore)."""
    tx = make_optimizer(opt, steps)
    abstract = jax.eval_shape(lambda: init_state(_abstract_params(config), tx))
    shardings = train_state_shardings(abstract, tx, mesh)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)


def model_flops_per_token(config: LWMConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward) of the model, the MFU numerator.

    6 x (matmul parameters: q, k, v, o, the SwiGLU MLP, the text head and, with vision, the vision
    head; embedding lookups cost none) + 6 x layers x seq_len x hidden for causal attention (the
    scores and the weighted sum, 4 x seq_len x hidden each way per layer forward, halved by the
    causal mask, x 3 for forward and backward) over the full sequence: packing's shorter
    documents are not credited, and rematerialisation is not counted (model FLOPs, not hardware).
    """
    h, kv = config.hidden_size, config.kv_heads * config.head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    heads = h * config.vocab_size + (h * config.vision_vocab_size if config.vision else 0)
    return 6.0 * (config.num_layers * per_layer + heads) + 6.0 * config.num_layers * seq_len * h


# Peak dense bf16 FLOP/s per device by `device_kind` substring (vendor data sheets; dense, no sparsity).
PEAK_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def peak_flops(device: Any, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one `device` for MFU: the override, else the table by device kind; None on CPU."""
    if override_tflops is not None:
        return override_tflops * 1e12
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)
