"""Tokenizers: SentencePiece BPE for text (the Flax VQGAN for vision arrives with its issue)."""

from lwmkit.tokenizers.text import (
    SentencePieceTokenizer,
    TextTokenizer,
    TokenizerError,
    train_bpe,
)

__all__ = ["SentencePieceTokenizer", "TextTokenizer", "TokenizerError", "train_bpe"]
