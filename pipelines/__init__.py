"""Apache Beam jobs that turn raw data into lwmkit token shards (books; more with later issues)."""

from lwmkit.pipelines.books import BooksOptions, NoValidDocumentsError, run_books

__all__ = ["BooksOptions", "NoValidDocumentsError", "run_books"]
