"""`lwm-pack images`: image-text pairs -> vision-text token shards."""

from __future__ import annotations

from lwmkit.pipelines.cli.common import (
    int_list,
    job_arguments,
    near_dedup_arguments,
    near_dedup_options,
    pack_arguments,
    pack_options,
    print_retry,
    run_options,
    split_inputs,
    work_options,
)
from lwmkit.pipelines.cli.vqgan import add_vqgan_arguments, vqgan_option_values


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    im = sub.add_parser(
        "images",
        help="image-text pairs (webdataset tars, parquet, folders, URL lists) -> vision-text token shards (Beam job)",
        epilog="Unknown options are passed to Beam. Without --vqgan the VQGAN is randomly initialised (tests only).",
    )
    im.add_argument("--input", action="append", required=True,
                    help="file glob or folder (.tar/.tar.gz webdataset, .parquet, captions .jsonl); repeatable")
    im.add_argument("--tokenizer", required=True, help="SentencePiece .model (e.g. LLaMA-2's tokenizer.model)")
    im.add_argument("--output", required=True, help="output directory (local or any Beam filesystem)")
    im.add_argument("--seq-len", type=int_list, default=(8192,), help="packed lengths, e.g. 8192,32768")
    add_vqgan_arguments(im, "images")
    e = im.add_argument_group("examples")
    e.add_argument("--generation-fraction", type=float, default=0.5, help="share of generation examples (default 0.5)")
    e.add_argument("--seed", type=int, default=0, help="seed of the per-pair understanding/generation choice")
    e.add_argument("--templates", default="lwm", choices=["lwm", "lwm_chat"], help="template preset (default lwm)")
    e.add_argument("--understanding-template", help="overrides the preset, e.g. '{vision}{caption}'")
    e.add_argument("--generation-template", help="overrides the preset, e.g. '{caption}{vision}'")
    s = im.add_argument_group("inputs and images")
    s.add_argument("--image-column", help="parquet column / jsonl key of the image (default: image, jpg, png, ...)")
    s.add_argument("--caption-column", help="parquet column / json key of the caption (default: caption, text, ...)")
    s.add_argument("--url-column", help="parquet column of the URL (default: url)")
    s.add_argument("--max-image-bytes", type=int, default=32 << 20, help="larger images or downloads are dropped")
    s.add_argument("--small-images", default="upscale", choices=["upscale", "drop"], help="images under 256 px")
    s.add_argument("--min-side", type=int, default=32, help="images with a shorter side are always dropped")
    s.add_argument("--max-pixels", type=int, default=89_478_485, help="decompression-bomb cap (width x height)")
    s.add_argument("--animated", default="first_frame", choices=["first_frame", "drop"])
    s.add_argument("--download-timeout", type=float, default=60.0,
                   help="wall-clock seconds for each URL's whole fetch, retries included, however bytes arrive")
    s.add_argument("--download-read-timeout", type=float, default=10.0,
                   help="seconds per connect/read (at most --download-timeout)")
    s.add_argument("--download-retries", type=int, default=2)
    s.add_argument("--download-backoff", type=float, default=1.0, help="seconds before the first retry (doubles)")
    s.add_argument("--allow-file-urls", action="store_true", help="also fetch file:// URLs")
    s.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="fetch from this host or IP even if it is private/loopback (repeatable)")
    s.add_argument("--allow-private-addresses", action="store_true",
                   help="fetch from any private, loopback or link-local address")
    s.add_argument("--ca-bundle", metavar="PEM", help="CA certificates trusted besides the system store "
                   "(default: $SSL_CERT_FILE); TLS verification cannot be turned off")
    near_dedup_arguments(im, "Hamming distance of two images' 64-bit pHash (bits) at or below which they are "
                         "near-copies; removed before the VQGAN runs", 12, int)
    job_arguments(im)
    pack_arguments(im)


def run(args, beam_args: list[str]) -> None:
    """Runs the image-text job (or its Dataflow dry run) and prints a summary line."""
    from lwmkit.pipelines.engine.dataflow import dry_run_instead
    from lwmkit.pipelines.examples.vision_text import Templates
    from lwmkit.pipelines.images.download import DownloadOptions
    from lwmkit.pipelines.images.job import ImagesOptions, run_images
    from lwmkit.pipelines.images.sources import SourceOptions
    from lwmkit.tokenizers.vision import ImageOptions

    preset = Templates.preset(args.templates)
    options = ImagesOptions(
        inputs=split_inputs(args.input),
        output=args.output,
        tokenizer=args.tokenizer,
        seq_lens=args.seq_len,
        generation_fraction=args.generation_fraction,
        seed=args.seed,
        templates=Templates(
            args.understanding_template or preset.understanding, args.generation_template or preset.generation
        ),
        sources=SourceOptions(args.image_column, args.caption_column, args.url_column, args.max_image_bytes),
        images=ImageOptions(args.small_images, args.max_pixels, args.animated, args.min_side),
        download=DownloadOptions(
            timeout_s=min(args.download_read_timeout, args.download_timeout),
            total_timeout_s=args.download_timeout,
            retries=args.download_retries,
            backoff_s=args.download_backoff,
            max_bytes=args.max_image_bytes,
            allow_file=args.allow_file_urls,
            allow_private=args.allow_private_addresses,
            allowed_hosts=tuple(args.allow_host),
            ca_bundle=args.ca_bundle,
        ),
        **vqgan_option_values(args),
        pack=pack_options(args),
        **near_dedup_options(args),
        **work_options(args),
        **run_options(args, beam_args),
    )
    if dry_run_instead(options):
        return
    manifest = run_images(options)
    summary = ", ".join(f"{k}: {v['records']} records" for k, v in manifest["datasets"].items())
    print(f"{manifest['documents']} image-text examples -> {summary}; {manifest['failures']['total']} failures")
    print_retry(manifest)
