"""Apache Beam jobs that turn raw data into lwmkit token shards (books; more with later issues).

Public names load on first use, so `lwm-pack --help` and `lwmkit.pipelines.cli` start without
importing Beam.
"""

__all__ = ["BooksOptions", "NoValidDocumentsError", "run_books"]


def __getattr__(name: str):
    if name in __all__:
        from lwmkit.pipelines import books

        return getattr(books, name)
    raise AttributeError(f"module 'lwmkit.pipelines' has no attribute {name!r}")
