"""Apache Beam jobs that turn raw data into lwmkit token shards: books, image-text pairs, videos, long-context QA.

Public names load on first use, so `lwm-pack --help` and `lwmkit.pipelines.cli` start without
importing Beam.
"""

import importlib

_EXPORTS = {
    "BooksOptions": "books",
    "NoValidDocumentsError": "books",
    "run_books": "books",
    "ImagesOptions": "image_text",
    "NoValidPairsError": "image_text",
    "run_images": "image_text",
    "QAOptions": "qa",
    "NoValidContextsError": "qa",
    "run_qa": "qa",
    "VideosOptions": "video_text",
    "NoValidVideosError": "video_text",
    "run_videos": "video_text",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lwmkit.pipelines.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lwmkit.pipelines' has no attribute {name!r}")
