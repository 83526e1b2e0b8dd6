"""`lwm-pack train-tokenizer`: a LLaMA-style BPE SentencePiece model trained on your text."""

from __future__ import annotations

from lwmkit.pipelines.cli.common import split_inputs


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    tt = sub.add_parser("train-tokenizer", help="train a LLaMA-style BPE SentencePiece model on your text")
    tt.add_argument("--input", action="append", required=True, help="file glob; repeatable")
    tt.add_argument("--vocab-size", type=int, default=32000)
    tt.add_argument("--output", required=True, help="path of the .model file to write")
    tt.add_argument("--text-key", default="text")
    tt.add_argument("--seed", type=int, default=0)
    tt.add_argument("--max-lines", type=int, default=2_000_000, help="lines SentencePiece samples (default 2M)")


def run(args, beam_args: list[str]) -> None:
    """Trains a BPE SentencePiece model on the inputs' text and writes it."""
    from lwmkit.pipelines.books.job import match_inputs
    from lwmkit.pipelines.books.sources import iter_texts
    from lwmkit.pipelines.engine.outputs import write_output_bytes
    from lwmkit.tokenizers.text import train_bpe

    files = match_inputs(split_inputs(args.input))
    lines = (line for f in files for text in iter_texts(f, args.text_key) for line in text.split("\n"))
    model = train_bpe(lines, args.vocab_size, seed=args.seed, input_sentence_size=args.max_lines)
    write_output_bytes(args.output, model)
    print(f"wrote {args.output} ({args.vocab_size} pieces, trained on {len(files)} files)")
