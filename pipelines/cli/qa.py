"""The `lwm-pack qa` subcommand: its arguments, and the call to `run_qa` they make.

Its own module because the QA job has many settings (contexts, generator, client); it
imports no Beam until the command runs.

    lwm-pack qa --input 'books/*.jsonl.zst' --tokenizer tokenizer.model --output qa/ --preset lwm-32k \
        --generator openai --base-url http://127.0.0.1:8000/v1 --model my-model --concurrency 32
    lwm-pack qa --documents out/documents --tokenizer tokenizer.model --output qa/ --generator extractive
"""

from __future__ import annotations

import argparse
from typing import Any

from lwmkit.pipelines.cli import common, job_command
from lwmkit.pipelines.cli.books import text_option_values

GENERATORS = ("extractive", "openai")


def add_parser(sub) -> None:
    """Adds `qa` to the subparsers `sub`."""
    from lwmkit.pipelines.qa.assembly import CONTEXT_PRESETS, ORDERS
    from lwmkit.pipelines.qa.extractive import FORMS
    from lwmkit.pipelines.qa.generators import SUPPORT_MODES

    qa = job_command.add_job_parser(
        sub, "qa", "books -> long-context QA chat examples, pairs from a model server or extractive (Beam job)",
        "Unknown options are passed to Beam. The API key is read from the variable --api-key-env names.")
    qa.add_argument("--input", action="append", help="raw book file glob, as for `books`; repeatable")
    qa.add_argument("--documents", help="a documents/ directory written by `lwm-pack books` (instead of --input)")
    qa.add_argument("--tokenizer", required=True, help="SentencePiece .model (for --documents: the one that made them)")
    qa.add_argument("--output", required=True, help=job_command.OUTPUT_HELP)
    qa.add_argument("--text-key", default="text")
    qa.add_argument("--min-chars", type=int, default=1)
    qa.add_argument("--max-chars", type=int, default=None)
    c = qa.add_argument_group("contexts")
    c.add_argument("--preset", default="lwm-32k", choices=list(CONTEXT_PRESETS), help="chunk size and context length")
    c.add_argument("--seq-len", type=int, help="context length in tokens (overrides the preset)")
    c.add_argument("--chunk-tokens", type=int, help="chunk size in tokens (overrides the preset)")
    c.add_argument("--min-fill", type=float, default=0.8, help="shortest context kept, as a share of seq_len")
    c.add_argument("--first-turn", help="template with {context}{question}{answer} (default: LWM's chat layout)")
    c.add_argument("--next-turn", help="template with {question}{answer}")
    c.add_argument("--question-order", default="shuffle", choices=list(ORDERS))
    c.add_argument("--no-final-eos-loss", dest="final_eos_loss", action="store_false",
                   help="weight 0 on the EOS after the last answer (default: trained, as LWM's TextProcessor)")
    c.add_argument("--seed", type=int, default=0, help="seeds the turn order and the extractive generator")
    g = qa.add_argument_group("generator")
    g.add_argument(
        "--generator",
        default="extractive",
        choices=list(GENERATORS),
        help="openai: any OpenAI-compatible server; extractive: rule-based, no model (default)",
    )
    g.add_argument("--pairs-per-chunk", type=int, default=1)
    g.add_argument("--max-attempts", type=int, default=3, help="replies parsed per chunk before it fails")
    g.add_argument("--cache-dir", help="reply cache (default OUTPUT/generator-cache)")
    g.add_argument("--books-per-batch", type=int, default=4, help="books whose chunks share one request pool")
    g.add_argument("--extractive-forms", default=",".join(FORMS), help=f"comma-separated subset of {','.join(FORMS)}")
    m = qa.add_argument_group("model server (--generator openai)")
    m.add_argument("--base-url", help="API root, e.g. http://127.0.0.1:8000/v1")
    m.add_argument("--model", help="model name the server expects")
    m.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    m.add_argument("--system-prompt", help="system message (default: a short instruction)")
    m.add_argument("--prompt-file", help="file holding the user prompt, with {chunk} and optionally {n}")
    m.add_argument("--temperature", type=float, default=0.7)
    m.add_argument("--max-tokens", type=int, default=512)
    m.add_argument("--request-seed", type=int, default=0, help="seed sent with requests (attempt k sends seed + k)")
    m.add_argument(
        "--support", default="words", choices=list(SUPPORT_MODES), help="how answers are checked against the chunk"
    )
    m.add_argument(
        "--min-support", type=float, default=0.5, help="with --support words: share of answer words in the chunk"
    )
    m.add_argument("--concurrency", type=int, default=8, help="requests in flight (per Beam worker)")
    m.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    m.add_argument("--retries", type=int, default=5, help="retries of 429/5xx/timeouts")
    m.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubles)")
    m.add_argument("--max-backoff", type=float, default=60.0)
    common.run_arguments(qa)
    qa.add_argument("--retry-failures", action="store_true",
                    help="run again over a finished output: every failed chunk gets --max-attempts new attempts "
                         "(replies that failed validation are not replayed from the cache); chunks that "
                         "succeeded are answered by the cache, so only the failed ones cost calls")
    common.near_dedup_arguments(qa, "estimated Jaccard similarity of word 5-grams at or above which two books are "
                                "near-copies; removed before chunking", 0.8)
    common.pack_arguments(qa)


def _generator(args):
    from lwmkit.pipelines.qa.client import ClientOptions
    from lwmkit.pipelines.qa.extractive import ExtractiveOptions
    from lwmkit.pipelines.qa.generators import (
        DEFAULT_PROMPT,
        DEFAULT_SYSTEM_PROMPT,
        ChatGeneratorOptions,
    )

    if args.generator == "extractive":
        forms = tuple(f for f in args.extractive_forms.split(",") if f)
        return ExtractiveOptions(seed=args.seed, forms=forms, pairs_per_chunk=args.pairs_per_chunk)
    if not args.base_url or not args.model:
        raise ValueError("--generator openai needs --base-url and --model")
    prompt = DEFAULT_PROMPT
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as f:
            prompt = f.read()
    client = ClientOptions(**job_command.arg_values(args, "base_url", "model", backoff_s="backoff",
                                                    max_backoff_s="max_backoff", **job_command.CLIENT_ARGS))
    return ChatGeneratorOptions(
        client=client,
        system_prompt=DEFAULT_SYSTEM_PROMPT if args.system_prompt is None else args.system_prompt,
        prompt=prompt,
        **job_command.arg_values(args, "temperature", "max_tokens", "pairs_per_chunk", "support", "min_support",
                                 seed="request_seed"),
    )


def run(args: argparse.Namespace, beam_args: list[str]) -> None:
    """Builds `QAOptions` from parsed arguments, runs the job and prints a summary line.

    With Beam's `--dry_run=True` it builds and checks the Dataflow job instead (`engine/dataflow`).
    A missing local input or tokenizer is refused, and a rerun over a complete local output is
    answered (`qa.options.complete_qa`), before Beam loads.
    """
    from lwmkit.pipelines.qa.accounting import retry_line
    from lwmkit.pipelines.qa.assembly import ContextOptions
    from lwmkit.pipelines.qa.options import QAOptions, complete_qa

    overrides: dict[str, Any] = {"min_fill": args.min_fill, "order": args.question_order, "seed": args.seed,
                                 "final_eos_loss": args.final_eos_loss}
    for key, value in (
        ("seq_len", args.seq_len),
        ("chunk_tokens", args.chunk_tokens),
        ("first_turn", args.first_turn),
        ("next_turn", args.next_turn),
    ):
        if value is not None:
            overrides[key] = value
    inputs = tuple(p for v in args.input or () for p in v.split(",") if p)
    common.check_local_inputs((), args.tokenizer)  # before Beam loads, in the job's order: tokenizer first
    common.check_local_inputs(inputs)
    options = QAOptions(
        inputs=inputs,
        documents=args.documents,
        output=args.output,
        tokenizer=args.tokenizer,
        generator=_generator(args),
        context=ContextOptions.preset(args.preset, **overrides),
        max_attempts=args.max_attempts,
        cache_dir=args.cache_dir,
        books_per_batch=args.books_per_batch,
        **text_option_values(args),
        pack=common.pack_options(args),
        retry_failures=args.retry_failures,
        **common.near_dedup_options(args),
        **common.run_options(args, beam_args),
    )
    if job_command.dry_run_instead(options, "qa.job"):
        return
    if (manifest := complete_qa(options)) is None:
        from lwmkit.pipelines.qa.job import run_qa

        manifest = run_qa(options)
    qa = manifest["qa"]
    g, ctx = qa["generation"], qa["contexts"]
    print(
        f"{ctx['count']} contexts of <= {ctx['seq_len']} tokens with {ctx['questions']} "
        f"questions from {qa['chunks']['chunks']} chunks ({qa['chunks']['failed']} failed); generator "
        f"{manifest['generator']['kind']}: {g['calls']} calls, {g['cache_hits']} cache hits, "
        f"{g['usage']['total_tokens']} tokens; {manifest['failures']['total']} failures"
    )
    if "retry" in manifest:
        print(retry_line(manifest["retry"]))
