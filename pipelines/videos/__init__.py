"""The video-text job (`lwm-pack videos`): video-caption (and video chat) pairs to token shards.

    options.py    VideosOptions and the job record they make, without Beam (the quick no-op answer,
                  complete_videos)
    job.py        build_pipeline, prepare_videos, run_videos
    stages.py     caption checks, decoding clips to frames, the example stage
    sources.py    reading video lists (folders, .tar, tables)
    download.py   yt-dlp downloads, address-checked
    frames.py     choosing and decoding frames (decord or PyAV)
    index.py      frame indexes and clip selection
    workers.py    the decode worker pools
    examples.py   LWM's video-text and video-chat examples
"""
