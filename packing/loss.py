"""Loss-weight policies applied to each packed record, chosen by name and recorded in the manifest.

A document carries its own per-token weights (its fields decide them: prompt 0, answer 1; BOS 0).
A policy then rescales them inside each packed record:
    as_is                          keep the documents' weights;
    modality:text=1,vision=0.5     multiply text and vision tokens' weights by the given factors;
    lwm_balance                    LWM's equal halves: text and vision tokens each carry half of the
                                   record's weight (0.5 x text loss + 0.5 x vision loss);
    per_document                   every segment carries the same share of the record's weight, so
                                   a long document does not drown the short ones.
Policies combine with '+', applied left to right, e.g. `modality:text=1,vision=0.5+per_document`.
The record's total weight is kept by lwm_balance and per_document.

Example, per_document on a record with a 3-token and a 1-token segment, all weights 1:
    before [1, 1, 1, 1]   segments [1, 1, 1, 2]
    after  [0.667, 0.667, 0.667, 2.0]   (each segment now sums to 2 = 4 / 2)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POLICY_NAMES = ("as_is", "modality", "lwm_balance", "per_document")


@dataclass(frozen=True)
class LossPolicy:
    """A parsed loss-weight policy; `spec` is its canonical name."""

    steps: tuple[tuple[str, tuple[tuple[str, float], ...]], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> LossPolicy:
        """Parses a policy name such as `modality:text=1,vision=0.5+per_document`.

        Raises:
          ValueError: naming the unknown policy or malformed factor and listing valid names.
        """
        steps = []
        for part in (p.strip() for p in spec.split("+")):
            name, _, args = part.partition(":")
            if name not in POLICY_NAMES:
                raise ValueError(f"loss policy {name!r} is not one of {list(POLICY_NAMES)}")
            factors: dict[str, float] = {}
            if name == "modality":
                for item in filter(None, args.split(",")):
                    key, _, value = item.partition("=")
                    if key not in ("text", "vision"):
                        raise ValueError(f"modality factor {key!r} must be 'text' or 'vision'")
                    try:
                        factors[key] = float(value)
                    except ValueError as e:
                        raise ValueError(f"modality factor {item!r} needs a number") from e
                    if factors[key] < 0:
                        raise ValueError(f"modality factor {item!r} must be >= 0")
                if not factors:
                    raise ValueError("modality needs factors, e.g. modality:text=1,vision=0.5")
            elif args:
                raise ValueError(f"loss policy {name!r} takes no arguments, got {args!r}")
            if name != "as_is":
                steps.append((name, tuple(sorted(factors.items()))))
        return cls(tuple(steps))

    @property
    def spec(self) -> str:
        if not self.steps:
            return "as_is"
        parts = []
        for name, factors in self.steps:
            parts.append(f"{name}:" + ",".join(f"{k}={v:g}" for k, v in factors) if factors else name)
        return "+".join(parts)

    def apply(self, weights: np.ndarray, vision_mask: np.ndarray, segment_ids: np.ndarray) -> np.ndarray:
        """Returns the record's weights under this policy (a new float32 array)."""
        w = weights.astype(np.float64)  # [seq]
        for name, factors in self.steps:
            if name == "modality":
                f = dict(factors)
                w = np.where(vision_mask, w * f.get("vision", 1.0), w * f.get("text", 1.0))
            elif name == "lwm_balance":
                total = w.sum()
                t, v = w[~vision_mask].sum(), w[vision_mask].sum()
                if t > 0 and v > 0:
                    w = np.where(vision_mask, w * (0.5 * total / v), w * (0.5 * total / t))
            elif name == "per_document":
                k = int(segment_ids.max(initial=0))
                sums = np.bincount(segment_ids, weights=w, minlength=k + 1)[1:]  # [k]
                live = sums > 0
                if live.any():
                    share = w.sum() / live.sum()
                    scale = np.zeros(k + 1)
                    scale[1:][live] = share / sums[live]
                    w = w * scale[segment_ids]
        return w.astype(np.float32)
