"""The video-QA part of `lwm-pack demo`: a generated video with known cuts through `lwm-pack video-qa`, offline."""

from __future__ import annotations

import os
from typing import Any, TextIO

from lwmkit.pipelines.tools.sample_videos import write_cut_video


def video_qa_part(output: str, tokenizer: str, seq_len: int, out: TextIO, progress: bool) -> dict[str, Any]:
    """Clips (PySceneDetect), offline captions and questions, a tiny random VQGAN, one chat example."""
    from lwmkit.pipelines.video_qa.clips import ClipOptions
    from lwmkit.pipelines.video_qa.job import VideoQAOptions, run_video_qa

    folder = os.path.join(output, "long-videos")
    os.makedirs(folder, exist_ok=True)
    video = write_cut_video(os.path.join(folder, "shots.mp4"))
    manifest = run_video_qa(
        VideoQAOptions(
            inputs=(video,),
            output=os.path.join(output, "video-qa-shards"),
            tokenizer=tokenizer,
            vqgan_preset="tiny",
            seq_lens=(seq_len,),
            clips=ClipOptions(min_clip_s=1.0, max_clip_s=5.0),
            max_frames=4,
            batch_size=4,
            progress=progress,
        )
    )
    t = manifest["video_qa"]["totals"]
    out.write(
        f"\nvideo-QA job (offline captions and questions): {video}, {t['seconds']:.0f} s -> {t['clips']} clips "
        f"at shot boundaries, {t['questions']} questions over the whole timeline -> {manifest['documents']} chat "
        f"example(s); evidence depth {manifest['video_qa']['evidence_depth']}\n"
    )
    return manifest
