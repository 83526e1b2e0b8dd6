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

from lwmkit.pipelines.cli import common, job_command, vqgan


def add_parser(sub) -> None:
    """Adds `videos` to the subparsers `sub`."""
    v = job_command.add_job_parser(
        sub, "videos", "videos (URLs or files) with captions or chat turns -> video-text token shards (Beam job)")
    job_command.add_io_arguments(v, "video list glob (.parquet, .csv, .jsonl); repeatable", (32768,),
                                 "packed lengths, e.g. 32768,131072")
    vqgan.add_vqgan_arguments(v, "frames")
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
    e = job_command.add_example_arguments(v, "share of captioned videos made generation", "video")
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
    job_command.add_access_arguments(d, "download", "also read file:// URLs and absolute paths")
    common.near_dedup_arguments(v, "share of aligned frames (a pHash every 0.5 s, within 12 bits) at or above which two "
                                "clips are near-copies; removed after the download, before decoding", 0.8)
    common.job_arguments(v)
    common.pack_arguments(v)


def run(args: argparse.Namespace, beam_args: list[str]) -> None:
    """Builds `VideosOptions` from parsed arguments, runs the job and prints a summary line.

    With Beam's `--dry_run=True` it builds and checks the Dataflow job instead (`engine/dataflow`).
    A missing local input or tokenizer is refused, and a rerun over a complete local output is
    answered (`videos.options.complete_videos`), before Beam loads.
    """
    common.check_local_inputs(common.split_inputs(args.input), args.tokenizer)  # before Beam loads
    from lwmkit.pipelines.videos.download import VideoDownloadOptions
    from lwmkit.pipelines.videos.examples import VideoTemplates
    from lwmkit.pipelines.videos.frames import DecodeOptions, FrameSampling
    from lwmkit.pipelines.videos.options import VideosOptions, complete_videos
    from lwmkit.pipelines.videos.sources import VideoSourceOptions

    decode = DecodeOptions(
        sampling=FrameSampling(args.sampling, args.num_frames, args.fps, args.max_frames),
        decoders=tuple(x.strip() for x in args.decoders.split(",") if x.strip()),
        **job_command.arg_values(args, "min_side", "max_pixels", "chunk_frames", "videos_per_worker",
                                 time_budget_s="decode_budget", workers="decode_workers"),
    )
    download = VideoDownloadOptions(
        total_timeout_s=max(args.download_total_timeout, args.download_timeout),
        **job_command.arg_values(args, "work_dir", "max_height", "time_ranges", timeout_s="download_timeout",
                                 max_bytes="max_video_bytes", host_interval_s="host_interval",
                                 **job_command.DOWNLOAD_ARGS),
        **job_command.access_values(args),
    )
    options = VideosOptions(
        **job_command.io_option_values(args),
        **job_command.arg_values(args, "generation_fraction", "seed"),
        templates=VideoTemplates.preset(args.templates, args.final_eos_loss),
        sources=VideoSourceOptions(args.url_column, args.path_column, args.caption_column, args.allow_file_urls),
        download=download,
        decode=decode,
        **vqgan.vqgan_option_values(args),
        pack=common.pack_options(args),
        **common.near_dedup_options(args),
        **common.run_options(args, beam_args),
        **common.work_options(args),
    )
    if job_command.dry_run_instead(options, "videos.job"):
        return
    if (manifest := complete_videos(options)) is None:
        from lwmkit.pipelines.videos.job import run_videos

        manifest = run_videos(options)
    job_command.print_datasets(manifest, f"video examples ({manifest['stages']['frames']['kept']} frames)")
