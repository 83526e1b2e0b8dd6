"""LWM's training loss: 0.5 x (vision loss from the vision head + text loss from the text head).

Each half is a weighted mean of next-token cross-entropy over its own targets: the text head
scores targets with `target_vision_mask` False, the vision head those with it True, both weighted
by `target_loss_weights` (the loader's fields, see `lwmkit.packing.batches`). Unlike LWM, which
averages each sequence first and then the batch, every weighted token of the batch counts the
same (packed records make the two agree when rows carry equal weight). A half with no weighted
target contributes 0, so a text-only batch on a vision model gets 0.5 x text loss, as in LWM; a
text-only model (config `vision=False`) has only the text term.

Example, one row, targets [6, 7, 3, 0] with target_vision_mask [F, F, T, F] and weights [1, 1, 1, 0]:
    text  = mean(-log p_text(6), -log p_text(7))       vision = -log p_vision(3)
    loss  = 0.5 * (text + vision)
`mix="tokens"` instead takes one weighted mean over all tokens (pair it with the packer's
`lwm_balance` policy, which already gives text and vision equal total weight per record).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from lwmkit.lwm_model.config import LOSS_MIXES as MIXES
from lwmkit.lwm_model.model import LWM, ModelOutput, forward


def weighted_cross_entropy(
    logits: jax.Array, targets: jax.Array, weights: jax.Array
) -> tuple[jax.Array, ...]:
    """Sums over tokens of weight x NLL, of weight, and of weight x (argmax == target).

    Args:
      logits: [..., vocab] (any float dtype; computed in float32); targets: int [...]; weights: [...].
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return jnp.sum(weights * nll), jnp.sum(weights), jnp.sum(weights * correct)


def lwm_loss(
    output: ModelOutput, batch: Mapping[str, Any], mix: str = "lwm"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss of a forward pass on `batch` (which must hold the loader's target fields).

    Returns:
      (loss, metrics) with metrics text_loss, vision_loss, text_accuracy, vision_accuracy,
      text_weight, vision_weight.

    Raises:
      ValueError: for an unknown `mix`.
    """
    if mix not in MIXES:
        raise ValueError(f"mix={mix!r}: must be one of {list(MIXES)}")
    targets = jnp.asarray(batch["targets"], jnp.int32)
    weights = jnp.asarray(batch["target_loss_weights"], jnp.float32)
    is_vision = jnp.asarray(batch["target_vision_mask"], bool)
    if output.vision_logits is None:
        is_vision = jnp.zeros_like(is_vision)
    t_nll, t_w, t_ok = weighted_cross_entropy(
        output.text_logits, jnp.where(is_vision, 0, targets), weights * ~is_vision
    )
    metrics = {"text_weight": t_w}
    text = t_nll / jnp.maximum(t_w, 1e-10)
    metrics.update(text_loss=text, text_accuracy=t_ok / jnp.maximum(t_w, 1e-10))
    if output.vision_logits is None:
        return text, metrics
    v_nll, v_w, v_ok = weighted_cross_entropy(
        output.vision_logits, jnp.where(is_vision, targets, 0), weights * is_vision
    )
    vision = v_nll / jnp.maximum(v_w, 1e-10)
    metrics.update(
        vision_loss=vision, vision_accuracy=v_ok / jnp.maximum(v_w, 1e-10), vision_weight=v_w
    )
    if mix == "lwm":
        return 0.5 * (vision + text), metrics
    return (t_nll + v_nll) / jnp.maximum(t_w + v_w, 1e-10), metrics


def make_loss_fn(
    model: LWM, mix: str = "lwm"
) -> Callable[[Any, Mapping[str, Any]], tuple[jax.Array, dict[str, jax.Array]]]:
    """`loss(params, batch) -> (loss, metrics)` for `model`, ready for `jax.value_and_grad(..., has_aux=True)`."""
    if mix not in MIXES:
        raise ValueError(f"mix={mix!r}: must be one of {list(MIXES)}")

    def loss(params: Any, batch: Mapping[str, Any]) -> tuple[jax.Array, dict[str, jax.Array]]:
        return lwm_loss(forward(model, params, dict(batch)), batch, mix)

    return loss
