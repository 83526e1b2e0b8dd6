"""Models that answer needle prompts: the `Backend` protocol and its two implementations.

    OpenAIBackend   any OpenAI-compatible HTTP endpoint (vLLM, llama.cpp server, a hosted API),
                    standard library HTTP only; `/completions` with the full templated prompt, or
                    `/chat/completions` with it as one user message (build such cases with the
                    "plain" template: the server adds its own chat template).
    LWMModelBackend lwmkit's own `lwm_model` with greedy decoding and a KV cache; takes text
                    prompts and token prompts (video cases: ids + vision_mask). JAX is imported
                    only when this backend is built, so the needle builder stays JAX-free.

Example:
    >>> backend = OpenAIBackend("http://127.0.0.1:8000/v1", model="lwm-text-1m")
    >>> backend.generate("You are a helpful assistant. USER: ... ASSISTANT: ", max_new_tokens=32)
    'The special magic Kyoto number is 5331051.'
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

OPENAI_MODES = ("completions", "chat")


class BackendError(RuntimeError):
    """A backend could not answer a prompt (the message says why)."""


@dataclass(frozen=True)
class TokenPrompt:
    """A prompt given as token ids: int32 [n] ids (BOS included) and bool [n] vision_mask."""

    tokens: np.ndarray
    vision_mask: np.ndarray

    def __post_init__(self):
        if np.shape(self.tokens) != np.shape(self.vision_mask) or np.ndim(self.tokens) != 1:
            raise ValueError(f"TokenPrompt: tokens {np.shape(self.tokens)} and vision_mask "
                             f"{np.shape(self.vision_mask)} must be 1-D and equal in shape")  # fmt: skip


Prompt = str | TokenPrompt


@runtime_checkable
class Backend(Protocol):
    """Prompt in, answer text out.

    Attributes:
      name: recorded in every result row.
      max_concurrency: how many prompts it may be given at once (the evaluator caps its threads).
    """

    name: str
    max_concurrency: int

    def generate(self, prompt: Prompt, max_new_tokens: int, *, bos: bool = True) -> str:
        """The model's answer. `bos`: whether the model should see BOS before a text prompt."""
        ...


class OpenAIBackend:
    """An OpenAI-compatible endpoint, greedy (temperature 0).

    Args:
      base_url: the API root, e.g. "http://127.0.0.1:8000/v1".
      model: the model name the server expects.
      mode: "completions" (raw prompt) or "chat" (the prompt as one user message).
      api_key: sent as a Bearer token when given.
      timeout: seconds per request.
      retries: further attempts after a connection error, HTTP 429 or 5xx (exponential backoff).
      max_concurrency: parallel requests the evaluator may send.
      extra: more JSON fields for each request (e.g. {"stop": ["\\n"]}).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        mode: str = "completions",
        api_key: str | None = None,
        timeout: float = 600.0,
        retries: int = 2,
        max_concurrency: int = 16,
        extra: dict[str, Any] | None = None,
    ):
        if mode not in OPENAI_MODES:
            raise ValueError(f"OpenAIBackend mode={mode!r}; allowed: {list(OPENAI_MODES)}")
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"OpenAIBackend base_url={base_url!r}: must start with http:// or https://")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.mode = mode
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.max_concurrency = max_concurrency
        self.extra = dict(extra or {})
        self.name = f"openai:{model}"

    def _request(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode("utf-8")
        for attempt in range(self.retries + 1):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as e:
                detail = e.read().decode("utf-8", "replace")[:300]
                if e.code != 429 and e.code < 500 or attempt == self.retries:
                    raise BackendError(f"{url}: HTTP {e.code}: {detail}") from e
            except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as e:
                if attempt == self.retries:
                    raise BackendError(f"{url}: {e}") from e
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise BackendError(f"{url}: the response is not JSON: {e}") from e
            except RecursionError:  # json.loads on a hostile body of deeply nested arrays
                raise BackendError(f"{url}: the response is JSON nested too deeply to parse") from None
            time.sleep(min(30.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")

    def generate(self, prompt: Prompt, max_new_tokens: int, *, bos: bool = True) -> str:
        if not isinstance(prompt, str):
            raise BackendError("an OpenAI-compatible endpoint takes text prompts; run video cases with lwm_model")
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_new_tokens, "temperature": 0.0, **self.extra}
        try:
            if self.mode == "chat":
                body["messages"] = [{"role": "user", "content": prompt}]
                return str(self._request("/chat/completions", body)["choices"][0]["message"]["content"])
            body["prompt"] = prompt
            return str(self._request("/completions", body)["choices"][0]["text"])
        except (KeyError, IndexError, TypeError) as e:
            raise BackendError(f"{self.base_url}: unexpected response shape: {e!r}") from e


class LWMModelBackend:
    """lwmkit's LWM model, greedy decoding with a KV cache (`lwm_model.generate`).

    Args:
      model: an `lwm_model.LWM` module; params: its parameters.
      tokenizer: the text tokenizer (`encode`/`encode_batch`, `decode`, `bos_id`, `eos_id`).
      bucket: prompts are left-padded to a multiple of this, so few lengths compile.
    """

    max_concurrency = 1

    def __init__(self, model: Any, params: Any, tokenizer: Any, *, bucket: int = 256, name: str = "lwm_model"):
        self.model = model
        self.params = params
        self.tokenizer = tokenizer
        self.bucket = bucket
        self.name = name
        self._lock = threading.Lock()

    @classmethod
    def from_preset(
        cls,
        preset: str,
        tokenizer: Any,
        *,
        checkpoint: str | None = None,
        checkpoint_format: str = "lwm",
        seed: int = 0,
        **overrides: Any,
    ) -> LWMModelBackend:
        """A model of the named size preset: random weights (seeded), or loaded from `checkpoint`.

        checkpoint_format: "lwm" (LWM's streaming msgpack), "orbax" (lwmkit's trainer, saved on any
        mesh: restored to the host) or "hf" (a Hugging Face LLaMA directory; the preset is then
        ignored). Random weights take the tokenizer's vocabulary size; a checkpoint's own tables
        set the vocabulary sizes and whether the model has vision tables.
        """
        import jax
        from flax.traverse_util import flatten_dict
        from lwmkit.lwm_model.checkpoint import (
            fit_params,
            read_lwm_params,
            restore_params,
            vocab_fields,
        )
        from lwmkit.lwm_model.config import preset as make_config
        from lwmkit.lwm_model.hf_llama import load_hf_llama
        from lwmkit.lwm_model.model import LWM, init_params

        if checkpoint is None:
            model = LWM(make_config(preset, **{"vocab_size": int(tokenizer.vocab_size), **overrides}))
            params = jax.jit(lambda key: init_params(model, key))(jax.random.key(seed))  # jitted: ~2x faster than eager
            return cls(model, params, tokenizer, name=f"lwm_model:{preset}:random{seed}")
        if checkpoint_format == "hf":
            config, params = load_hf_llama(checkpoint, **{"vocab_size": int(tokenizer.vocab_size), **overrides})
            return cls(LWM(config), params, tokenizer, name=f"lwm_model:{checkpoint}")
        if checkpoint_format == "lwm":
            flat = read_lwm_params(checkpoint)
        elif checkpoint_format == "orbax":
            flat = flatten_dict(restore_params(checkpoint), sep="/")
        else:
            raise ValueError(f"checkpoint_format={checkpoint_format!r}; allowed: ['lwm', 'orbax', 'hf']")
        config = make_config(preset, **{**vocab_fields(flat), **overrides})
        return cls(LWM(config), fit_params(flat, config, str(checkpoint)), tokenizer, name=f"lwm_model:{checkpoint}")

    def _token_prompt(self, prompt: Prompt, bos: bool) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(prompt, str):
            ids = self.tokenizer.encode_batch([prompt])[0]
            ids = ([int(self.tokenizer.bos_id)] if bos else []) + list(ids)
            return np.asarray(ids, np.int32), np.zeros(len(ids), bool)
        tokens = np.asarray(prompt.tokens, np.int32).copy()
        mask = np.asarray(prompt.vision_mask, bool)
        c = self.model.config
        if mask.any():
            if not c.vision:
                raise BackendError("a video prompt needs a model with vision=True")
            vision = tokens[mask]
            # VQGAN layout uses <eof>=8192, <eov>=8193; a model with a smaller code book numbers them after its codes.
            vision = np.where(vision == 8192, c.eof_id, np.where(vision == 8193, c.eov_id, vision))
            if (bad := vision[(vision >= c.vision_codes) & (vision != c.eof_id) & (vision != c.eov_id)]).size:
                raise BackendError(f"vision code {int(bad[0])} is outside this model's {c.vision_codes} codes")
            tokens[mask] = vision
        return tokens, mask

    def generate(self, prompt: Prompt, max_new_tokens: int, *, bos: bool = True) -> str:
        from lwmkit.lwm_model.generate import SamplingConfig, generate, pad_prompts

        tokens, mask = self._token_prompt(prompt, bos)
        c = self.model.config
        if int(tokens.max(initial=0, where=~mask)) >= c.vocab_size:
            top = int(tokens[~mask].max())
            raise BackendError(f"text id {top} is outside the model's vocabulary of {c.vocab_size}")
        width = -(-len(tokens) // self.bucket) * self.bucket
        if width + max_new_tokens > c.max_sequence_length:
            raise BackendError(
                f"prompt of {len(tokens)} tokens (padded to {width}) + {max_new_tokens} new tokens exceeds the "
                f"model's max_sequence_length {c.max_sequence_length}"
            )
        batch = pad_prompts([tokens.tolist()], [mask.tolist()], multiple=self.bucket)
        eos = int(self.tokenizer.eos_id)
        settings = SamplingConfig(max_new_tokens=max_new_tokens, eos_id=eos, pad_id=eos)
        with self._lock:
            out = np.asarray(generate(self.model, self.params, batch, settings).tokens)[0]
        ids = out.tolist()
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.tokenizer.decode(ids)
