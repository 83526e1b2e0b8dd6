"""The `lwm-pack videos` subcommand: its arguments, and the call to `run_videos` they make.

Its own module because the video job has many settings (sampling, decoders, downloads);
it imports no Beam until the command runs.

    lwm-pack videos --input 'webvid/*.csv' --tokenizer tokenizer.model --vqgan vqgan.safetensors \
        --num-frames 32 --seq-len 32768 --output out/
    lwm-pack videos --input chat.jsonl --tokenizer tokenizer.model --sampling fps --fps 1 --max-frames 3600 \
        --seq-len 1048576 --output out/
"""

from __future__ import annotations

import argparse

from lwmkit.pipelines.cli.common import (
    int_list,
    job_arguments,
    near_dedup_arguments,
    near_dedup_options,
    pack_arguments,
    pack_options,
    run_options,
    work_options,
)
from lwmkit.pipelines.cli.vqgan import add_vqgan_arguments, vqgan_option_values


def add_parser(sub) -> None:
    """Adds `videos` to the subparsers `sub`."""
    v = sub.add_parser(
        "videos",
        help="videos (URLs or files) with captions or chat turns -> video-text token shards (Beam job)",
        epilog="Unknown options are passed to Beam. Without --vqgan the VQGAN is randomly initialised (tests only).",
    )
    v.add_argument("--input", action="append", required=True,
                   help="video list glob (.parquet, .csv, .jsonl); repeatable")
    v.add_argument("--tokenizer", required=True, help="SentencePiece .model (e.g. LLaMA-2's tokenizer.model)")
    v.add_argument("--output", required=True, help="output directory (local or any Beam filesystem)")
    v.add_argument("--seq-len", type=int_list, default=(32768,), help="packed lengths, e.g. 32768,131072")
    add_vqgan_arguments(v, "frames")
    s = v.add_argument_group("frames")
    s.add_argument("--sampling", default="count", choices=["count", "fps"], help="by frame count (LWM) or by rate")
    s.add_argument("--num-frames", type=int, default=32, help="frames per video in count mode (default 32)")
    s.add_argument("--fps", type=float, default=1.0, help="frames per second of video in fps mode")
    s.add_argument("--max-frames", type=int, default=4096, help="most frames of one video, both modes")
    s.add_argument("--decoders", default="decord,pyav", help="decoders to try in order (decord, pyav)")
    s.add_argument("--min-side", type=int, default=16, help="videos with a shorter side are dropped")
    s.add_argument("--max-pixels", type=int, default=3840 * 2160, help="videos with larger frames are dropped")
    s.add_argument("--decode-workers", type=int, default=1, help="decode processes per Beam worker process")
    s.add_argument("--decode-budget", type=float, default=600.0, help="seconds a video may wait on its decoder")
    s.add_argument("--videos-per-worker", type=int, default=32, help="decode processes are replaced after this many")
    s.add_argument("--chunk-frames", type=int, default=16, help="frames per message from a decode process")
    e = v.add_argument_group("examples")
    e.add_argument("--generation-fraction", type=float, default=0.5, help="share of captioned videos made generation")
    e.add_argument("--seed", type=int, default=0, help="seed of the per-video understanding/generation choice")
    e.add_argument("--templates", default="lwm", choices=["lwm", "lwm_chat"], help="template preset (default lwm)")
    e.add_argument("--no-final-eos-loss", dest="final_eos_loss", action="store_false",
                   help="chat examples: weight 0 on the EOS after the last answer (default: trained, as LWM)")
    e.add_argument("--url-column", help="column of the video URL (default: url, contentUrl, ...)")
    e.add_argument("--path-column", help="column of the video path (default: path, video_path, ...)")
    e.add_argument("--caption-column", help="column of the caption (default: caption, text, name)")
    d = v.add_argument_group("downloads")
    d.add_argument("--work-dir", help="where downloads are kept between runs (default OUTPUT/video-cache)")
    d.add_argument("--max-height", type=int, default=360, help="format cap in pixels (frames are cropped to 256)")
    d.add_argument("--download-timeout", type=float, default=20.0, help="seconds per connect/read")
    d.add_argument("--download-total-timeout", type=float, default=900.0, help="seconds per transfer")
    d.add_argument("--download-retries", type=int, default=2)
    d.add_argument("--download-backoff", type=float, default=2.0, help="seconds before the first retry (doubles)")
    d.add_argument("--max-video-bytes", type=int, default=1 << 31, help="larger downloads are dropped")
    d.add_argument("--host-interval", type=float, default=0.0, help="least seconds between requests to one host")
    d.add_argument("--time-ranges", action="store_true", help="download only each row's clip range (needs ffmpeg)")
    d.add_argument("--allow-file-urls", action="store_true", help="also read file:// URLs and absolute paths")
    d.add_argument("--allow-host", action="append", default=[], metavar="HOST",
                   help="download from this host or IP even if it is private/loopback (repeatable)")
    d.add_argument("--allow-private-addresses", action="store_true",
                   help="download from any private, loopback or link-local address")
    d.add_argument("--ca-bundle", metavar="PEM", help="CA certificates trusted besides the system store "
                   "(default: $SSL_CERT_FILE); TLS verification cannot be turned off")
    near_dedup_arguments(v, "share of aligned frames (a pHash every 0.5 s, within 12 bits) at or above which two "
                         "clips are near-copies; removed after the download, before decoding", 0.8)
    job_arguments(v)
    pack_arguments(v)


def run(args: argparse.Namespace, beam_args: list[str]) -> None:
    """Builds `VideosOptions` from parsed arguments, runs the job and prints a summary line.

    With Beam's `--dry_run=True` it builds and checks the Dataflow job instead (`engine/dataflow`).
    """
    from lwmkit.pipelines.engine.dataflow import dry_run_instead
    from lwmkit.pipelines.engine.resume import retry_summary
    from lwmkit.pipelines.videos.download import VideoDownloadOptions
    from lwmkit.pipelines.videos.examples import VideoTemplates
    from lwmkit.pipelines.videos.frames import DecodeOptions, FrameSampling
    from lwmkit.pipelines.videos.job import VideosOptions, run_videos
    from lwmkit.pipelines.videos.sources import VideoSourceOptions

    decode = DecodeOptions(
        sampling=FrameSampling(args.sampling, args.num_frames, args.fps, args.max_frames),
        decoders=tuple(x.strip() for x in args.decoders.split(",") if x.strip()),
        min_side=args.min_side,
        max_pixels=args.max_pixels,
        chunk_frames=args.chunk_frames,
        time_budget_s=args.decode_budget,
        workers=args.decode_workers,
        videos_per_worker=args.videos_per_worker,
    )
    download = VideoDownloadOptions(
        work_dir=args.work_dir,
        max_height=args.max_height,
        timeout_s=args.download_timeout,
        total_timeout_s=max(args.download_total_timeout, args.download_timeout),
        retries=args.download_retries,
        backoff_s=args.download_backoff,
        max_bytes=args.max_video_bytes,
        host_interval_s=args.host_interval,
        allow_file=args.allow_file_urls,
        allow_private=args.allow_private_addresses,
        allowed_hosts=tuple(args.allow_host),
        time_ranges=args.time_ranges,
        ca_bundle=args.ca_bundle,
    )
    inputs = tuple(p for x in args.input for p in x.split(",") if p)
    options = VideosOptions(
        inputs=inputs,
        output=args.output,
        tokenizer=args.tokenizer,
        seq_lens=args.seq_len,
        generation_fraction=args.generation_fraction,
        seed=args.seed,
        templates=VideoTemplates.preset(args.templates, args.final_eos_loss),
        sources=VideoSourceOptions(args.url_column, args.path_column, args.caption_column, args.allow_file_urls),
        download=download,
        decode=decode,
        **vqgan_option_values(args),
        pack=pack_options(args),
        **near_dedup_options(args),
        **run_options(args, beam_args),
        **work_options(args),
    )
    if dry_run_instead(options):
        return
    manifest = run_videos(options)
    summary = ", ".join(f"{k}: {v['records']} records" for k, v in manifest["datasets"].items())
    frames = manifest["stages"]["frames"]["kept"]
    print(f"{manifest['documents']} video examples ({frames} frames) -> {summary}; "
          f"{manifest['failures']['total']} failures")
    if line := retry_summary(manifest):
        print(line)
