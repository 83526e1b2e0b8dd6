"""`lwm-pack images`: image-text pairs -> vision-text token shards."""

from __future__ import annotations

from lwmkit.pipelines.cli import common, job_command, vqgan


def add_parser(sub) -> None:
    """Adds the command to the subparsers `sub`."""
    im = job_command.add_job_parser(
        sub, "images", "image-text pairs (webdataset tars, parquet, folders, URL lists) -> vision-text token shards (Beam job)")
    job_command.add_io_arguments(
        im, "file glob or folder (.tar/.tar.gz webdataset, .parquet, captions .jsonl); repeatable", (8192,),
        "packed lengths, e.g. 8192,32768")
    vqgan.add_vqgan_arguments(im, "images")
    e = job_command.add_example_arguments(im, "share of generation examples (default 0.5)", "pair")
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
    job_command.add_access_arguments(s, "fetch", "also fetch file:// URLs")
    common.near_dedup_arguments(im, "Hamming distance of two images' 64-bit pHash (bits) at or below which they are "
                                "near-copies; removed before the VQGAN runs", 12, int)
    common.job_arguments(im)
    common.pack_arguments(im)


def run(args, beam_args: list[str]) -> None:
    """Runs the image-text job (or its Dataflow dry run) and prints a summary line.

    A missing local input or tokenizer is refused, and a rerun over a complete local output is
    answered (`images.options.complete_images`), before Beam loads.
    """
    common.check_local_inputs(common.split_inputs(args.input), args.tokenizer)  # before Beam loads
    from lwmkit.pipelines.engine.web.url_guard import DownloadOptions
    from lwmkit.pipelines.examples.vision_text import Templates
    from lwmkit.pipelines.images.options import ImagesOptions, complete_images
    from lwmkit.pipelines.images.sources import SourceOptions
    from lwmkit.tokenizers.vision import ImageOptions

    preset = Templates.preset(args.templates)
    options = ImagesOptions(
        **job_command.io_option_values(args),
        **job_command.arg_values(args, "generation_fraction", "seed"),
        templates=Templates(
            args.understanding_template or preset.understanding, args.generation_template or preset.generation
        ),
        sources=SourceOptions(args.image_column, args.caption_column, args.url_column, args.max_image_bytes),
        images=ImageOptions(args.small_images, args.max_pixels, args.animated, args.min_side),
        download=DownloadOptions(
            timeout_s=min(args.download_read_timeout, args.download_timeout),
            **job_command.arg_values(args, total_timeout_s="download_timeout", max_bytes="max_image_bytes",
                                     **job_command.DOWNLOAD_ARGS),
            **job_command.access_values(args),
        ),
        **vqgan.vqgan_option_values(args),
        pack=common.pack_options(args),
        **common.near_dedup_options(args),
        **common.work_options(args),
        **common.run_options(args, beam_args),
    )
    if job_command.dry_run_instead(options, "images.job"):
        return
    if (manifest := complete_images(options)) is None:
        from lwmkit.pipelines.images.job import run_images

        manifest = run_images(options)
    job_command.print_datasets(manifest, "image-text examples")
