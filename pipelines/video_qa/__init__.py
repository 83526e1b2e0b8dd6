"""The video-QA job (`lwm-pack video-qa`): long videos -> clips -> captions -> QA over the whole video -> LWM chat examples.

    options.py  VideoQAOptions and the job record they make, without Beam (the quick no-op answer,
                complete_video_qa)
    job.py      build_pipeline, prepare_video_qa, run_video_qa
    clips.py    shot boundaries (PySceneDetect) or stride, thumbnails for the captioner
    models.py   the captioner and the timeline QA generator (OpenAI-compatible or offline)
    stages.py   read, clips, caption, captions, questions, and the manifest statistics
"""
