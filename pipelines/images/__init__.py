"""The image-text job (`lwm-pack images`): image-caption pairs to vision-text token shards.

    options.py    ImagesOptions (and VisionTextOptions, the fields the video job shares) and the job
                  record they make, without Beam (the quick no-op answer, complete_images)
    job.py        build_pipeline, prepare_images, run_images
    stages.py     caption checks, the VQGAN encode step, joining codes, the example stage
    sources.py    reading pairs from folders, .tar shards, .parquet and .jsonl tables
    download.py   fetching image URLs (bounded, address-checked, retried)
"""
