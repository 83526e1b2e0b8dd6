"""Tokenizers: SentencePiece BPE for text; image preprocessing and the Flax VQGAN for vision."""

from lwmkit.tokenizers.text import (
    SentencePieceTokenizer,
    TextTokenizer,
    TokenizerError,
    train_bpe,
)
from lwmkit.tokenizers.vision import (
    ImageError,
    ImageOptions,
    codes_to_png,
    frame_codes,
    load_image,
    to_model_input,
    vision_field,
)
from lwmkit.tokenizers.vqgan import VQGAN_PRESETS, ImageTokenizer, VQGANConfig, WeightsError

__all__ = ["SentencePieceTokenizer", "TextTokenizer", "TokenizerError", "train_bpe"]
__all__ += ["ImageError", "ImageOptions", "codes_to_png", "frame_codes", "load_image", "to_model_input", "vision_field"]
__all__ += ["VQGAN_PRESETS", "ImageTokenizer", "VQGANConfig", "WeightsError"]
