"""Text tokenization with SentencePiece: LLaMA-2's `tokenizer.model` or one trained by lwmkit.

`SentencePieceTokenizer` holds the serialized model (so a Beam worker needs no file access) and
builds the SentencePiece processor lazily, once per process; the processor itself is never
pickled. `encode_document` gives LWM's document layout: BOS (loss 0), the text, EOS (loss 1).

Example:
    >>> tok = SentencePieceTokenizer.from_file("tokenizer.model")
    >>> tok.encode_document("Hello")          # [BOS, ...pieces of "Hello"..., EOS]
    array([    1, 15043,     2], dtype=int32)
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import numpy as np


class TextTokenizer(Protocol):
    """What lwmkit needs from a text tokenizer."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Sequence[int]) -> str: ...
    def fingerprint(self) -> dict[str, Any]: ...


class TokenizerError(ValueError):
    """A tokenizer model cannot be loaded or used."""


class SentencePieceTokenizer:
    """A SentencePiece model, e.g. LLaMA-2's (32,000 ids, <unk>=0, <s>=1, </s>=2).

    Args:
      model_proto: the bytes of a `.model` file.
      name: where the model came from, for error messages and the manifest.
      num_threads: threads for batch encoding (1 inside Beam workers, which parallelise by process).
    """

    def __init__(self, model_proto: bytes, name: str = "<bytes>", num_threads: int = 1):
        self._proto = bytes(model_proto)
        self.name = name
        self.num_threads = num_threads
        self._sp = None
        self._load()  # fail early, in the driver, on a bad model

    @classmethod
    def from_file(cls, path: str, num_threads: int = 1) -> SentencePieceTokenizer:
        """Loads a `.model` file from a local path.

        Raises:
          TokenizerError: if the file is missing or not a SentencePiece model.
        """
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise TokenizerError(f"{path}: cannot read tokenizer model: {e}") from e
        return cls(data, name=path, num_threads=num_threads)

    def _load(self):
        if self._sp is None:
            import sentencepiece as spm

            sp = spm.SentencePieceProcessor()
            try:
                sp.LoadFromSerializedProto(self._proto)
            except Exception as e:  # sentencepiece raises RuntimeError/OSError by version
                raise TokenizerError(f"{self.name}: not a SentencePiece model: {e}") from e
            self._sp = sp
        return self._sp

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_sp"] = None  # rebuilt lazily in the worker
        return state

    @property
    def model_proto(self) -> bytes:
        return self._proto

    @property
    def vocab_size(self) -> int:
        return self._load().get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._load().bos_id()

    @property
    def eos_id(self) -> int:
        return self._load().eos_id()

    @property
    def unk_id(self) -> int:
        return self._load().unk_id()

    @property
    def pad_id(self) -> int:
        return self._load().pad_id()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""
        return self._load().encode(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without BOS/EOS."""
        return self._load().encode(list(texts), num_threads=self.num_threads)

    def encode_document(self, text: str) -> np.ndarray:
        """LWM's document layout: [BOS] + ids(text) + [EOS], int32."""
        ids = self._load().encode(text)
        out = np.empty(len(ids) + 2, dtype=np.int32)
        out[0] = self.bos_id
        out[1:-1] = ids
        out[-1] = self.eos_id
        return out

    def decode(self, ids: Sequence[int]) -> str:
        return self._load().decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._load().id_to_piece(int(i))

    def fingerprint(self) -> dict[str, Any]:
        """Identifies the model exactly: file hash, vocabulary size and special ids."""
        return {
            "type": "sentencepiece",
            "sha256": hashlib.sha256(self._proto).hexdigest(),
            "vocab_size": self.vocab_size,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "unk_id": self.unk_id,
            "pad_id": self.pad_id,
        }


def train_bpe(
    sentences: Iterable[str],
    vocab_size: int,
    *,
    seed: int = 0,
    max_sentence_length: int = 16384,
    input_sentence_size: int = 2_000_000,
    num_threads: int = 1,
) -> bytes:
    """Trains a LLaMA-style BPE SentencePiece model and returns its `.model` bytes.

    LLaMA-2's settings: BPE, byte fallback (every string round-trips, none maps to <unk>, except
    that U+2581, SentencePiece's space marker, decodes as a space), digits
    split, no text normalization, <unk>=0, <s>=1, </s>=2, no pad id.

    Args:
      sentences: training text, one sentence or line per item.
      vocab_size: pieces in the model, including the 256 byte pieces and 3 specials.
      seed: SentencePiece's random seed, for reproducible models.

    Raises:
      ValueError: if vocab_size is too small or there is no text.
      TokenizerError: if SentencePiece refuses the input.
    """
    import io

    import sentencepiece as spm

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 byte pieces + specials), got {vocab_size}")
    counted = _CountingIterator(s for s in sentences if s.strip())
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=counted,
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            byte_fallback=True,
            split_digits=True,
            allow_whitespace_only_pieces=True,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            character_coverage=0.99995,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            max_sentence_length=max_sentence_length,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            num_threads=num_threads,
            minloglevel=2,
        )
    except RuntimeError as e:
        if counted.count == 0:
            raise ValueError("no training text: every input line was empty") from e
        raise TokenizerError(f"SentencePiece training failed: {e}") from e
    if counted.count == 0:
        raise ValueError("no training text: every input line was empty")
    return model.getvalue()


class _CountingIterator:
    def __init__(self, it: Iterable[str]):
        self._it = iter(it)
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        s = next(self._it)
        self.count += 1
        return s
