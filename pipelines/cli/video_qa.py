"""The `lwm-pack video-qa` subcommand: long videos -> clips -> captions -> QA -> LWM chat shards.

    lwm-pack video-qa --input 'videos/*.mp4' --tokenizer tokenizer.model --vqgan vqgan.safetensors \
        --base-url http://127.0.0.1:8000/v1 --model Qwen/Qwen2-VL-7B-Instruct --seq-len 131072 --output vqa/
    lwm-pack video-qa --input 'videos/*.mp4' --tokenizer tokenizer.model --offline --output vqa/

Without --base-url (or with --offline) both model steps run offline (labelled `offline` in the manifest).
"""

from __future__ import annotations

import argparse

from lwmkit.pipelines.cli import common, job_command, vqgan


def add_parser(sub) -> None:
    """Adds `video-qa` to the subparsers `sub`."""
    v = job_command.add_job_parser(
        sub, "video-qa", "long videos -> clip captions and QA over the whole video -> LWM video chat shards (Beam job)")
    job_command.add_io_arguments(v, "video file glob (.mp4, .mkv, .webm, ...)", (32768,),
                                 "packed lengths; frames fill the smallest", tokenizer_help="SentencePiece .model")
    vqgan.add_vqgan_arguments(v, "frames")  # its own group: --max-frames still lists after --seq-len
    v.add_argument("--max-frames", type=int, default=4096, help="most frames of one video in its example")
    c = v.add_argument_group("clips")
    c.add_argument("--clips", default="scenes", choices=["scenes", "stride"], help="shot boundaries or fixed pieces")
    c.add_argument("--threshold", type=float, default=27.0, help="PySceneDetect content detector threshold")
    c.add_argument("--min-clip", type=float, default=2.0, help="shortest clip in seconds")
    c.add_argument("--max-clip", type=float, default=10.0, help="longest clip in seconds (longer scenes are cut)")
    c.add_argument("--stride", type=float, default=10.0, help="piece length of --clips stride")
    c.add_argument("--caption-frames", type=int, default=2, help="thumbnails per clip sent to the captioner")
    m = v.add_argument_group("model server")
    m.add_argument("--offline", action="store_true", help="no model: captions from colours, questions from the timeline")
    m.add_argument("--base-url", help="API root, e.g. http://127.0.0.1:8000/v1")
    m.add_argument("--model", help="vision-language model for captions")
    m.add_argument("--qa-base-url", help="API root of the QA model (default --base-url)")
    m.add_argument("--qa-model", help="model for the questions (default --model)")
    m.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    m.add_argument("--questions", type=int, default=4, help="QA pairs asked for per video")
    m.add_argument("--max-attempts", type=int, default=3, help="replies parsed per clip or video before it fails")
    m.add_argument("--cache-dir", help="reply cache (default OUTPUT/generator-cache)")
    m.add_argument("--concurrency", type=int, default=8, help="requests in flight (per Beam worker)")
    m.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    m.add_argument("--retries", type=int, default=5, help="retries of 429/5xx/timeouts")
    common.job_arguments(v)
    common.pack_arguments(v)


def run(args: argparse.Namespace, beam_args: list[str]) -> None:
    """Builds `VideoQAOptions` from parsed arguments, runs the job and prints a summary line.

    A missing local input or tokenizer is refused, and a rerun over a complete local output is
    answered (`video_qa.options.complete_video_qa`), before Beam loads.
    """
    common.check_local_inputs(common.split_inputs(args.input), args.tokenizer)  # before Beam loads
    from lwmkit.pipelines.qa.client import ClientOptions
    from lwmkit.pipelines.video_qa.clips import ClipOptions
    from lwmkit.pipelines.video_qa.models import ChatCaptionerOptions, ChatQAOptions, OfflineOptions
    from lwmkit.pipelines.video_qa.options import VideoQAOptions, complete_video_qa

    if args.offline or not args.base_url:
        captioner, questions = OfflineOptions(args.questions), OfflineOptions(args.questions)
    else:
        if not args.model:
            raise ValueError("--model: give the vision-language model's name with --base-url")

        def client(url, model):
            return ClientOptions(base_url=url, model=model, **job_command.arg_values(args, **job_command.CLIENT_ARGS))

        captioner = ChatCaptionerOptions(client(args.base_url, args.model))
        questions = ChatQAOptions(client(args.qa_base_url or args.base_url, args.qa_model or args.model),
                                  questions=args.questions)
    clips = ClipOptions(method=args.clips, threshold=args.threshold, min_clip_s=args.min_clip,
                        max_clip_s=args.max_clip, stride_s=args.stride, caption_frames=args.caption_frames)
    options = VideoQAOptions(
        **job_command.io_option_values(args),
        clips=clips,
        captioner=captioner,
        questions=questions,
        max_attempts=args.max_attempts,
        cache_dir=args.cache_dir,
        max_frames=args.max_frames,
        **vqgan.vqgan_option_values(args),
        pack=common.pack_options(args),
        **common.run_options(args, beam_args),
        **common.work_options(args),
    )
    if job_command.dry_run_instead(options, "video_qa.job"):
        return
    if (manifest := complete_video_qa(options)) is None:
        from lwmkit.pipelines.video_qa.job import run_video_qa

        manifest = run_video_qa(options)
    t = manifest.get("video_qa", {}).get("totals", {})
    print(f"{manifest['documents']} video chat examples from {t.get('videos', 0)} videos, {t.get('clips', 0)} clips, "
          f"{t.get('questions', 0)} questions; {t.get('caption.calls', 0) + t.get('qa.calls', 0)} model calls, "
          f"{t.get('caption.cache_hits', 0) + t.get('qa.cache_hits', 0)} cache hits; "
          f"{manifest['failures']['total']} failures")
