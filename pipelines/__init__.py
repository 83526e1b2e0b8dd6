"""Apache Beam jobs that turn raw data into lwmkit token shards: books, image-text pairs, videos, long-context QA.

Public names load on first use, so `lwm-pack --help` and `lwmkit.pipelines.cli` start without
importing Beam (the options classes load from each job's Beam-free `options.py`). The folders (see
docs/architecture.md) and the dependency rule between them, kept by tests/test_layering.py (a
folder may import itself and the folders after its arrow):

    cli -> tools, books, images, videos, video_qa, qa, pack, examples, dedup, writing, engine
    tools -> books, images, videos, video_qa, qa, pack, examples, dedup, writing, engine
    books -> examples, dedup, writing, engine
    images -> examples, dedup, writing, engine
    videos -> examples, dedup, writing, engine, images, qa
    video_qa -> examples, dedup, writing, engine, videos, qa
    qa -> examples, dedup, writing, engine, books, pack
    pack -> writing, engine
    examples -> engine
    dedup -> engine
    writing -> engine
    engine ->

Declared exceptions between jobs: QA reads books with the books job's stages and document
shards with the pack job's reader; videos take the caption check and the archive member check
from images, and chat-turn parsing from qa; video_qa runs the video job's decode-to-example
stages and drives its model calls with the QA job's client, cache and call runner.
"""

import importlib

_EXPORTS = {
    "BooksOptions": "books.options",  # no Beam
    "NoValidDocumentsError": "books.job",
    "run_books": "books.job",
    "ImagesOptions": "images.options",  # no Beam
    "NoValidPairsError": "images.job",
    "run_images": "images.job",
    "QAOptions": "qa.options",  # no Beam
    "NoValidContextsError": "qa.job",
    "run_qa": "qa.job",
    "VideosOptions": "videos.options",  # no Beam
    "NoValidVideosError": "videos.job",
    "run_videos": "videos.job",
    "VideoQAOptions": "video_qa.options",  # no Beam
    "NoValidVideoQAError": "video_qa.job",
    "run_video_qa": "video_qa.job",
}
__all__ = sorted(_EXPORTS)


def lazy_exports(package: str, exports: dict[str, str]):
    """The module `__getattr__` of a package whose public names load on first use: `exports` maps
    each name to the module under `package` that defines it (also used by `pipelines.dedup`).

    Example:
        __getattr__ = lazy_exports(__name__, {"run_books": "books.job"})
    """

    def __getattr__(name: str):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


__getattr__ = lazy_exports(__name__, _EXPORTS)
