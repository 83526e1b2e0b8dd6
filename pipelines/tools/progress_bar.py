"""A progress bar for the long commands that run no Beam job (`export`, `inspect --render`).

`progress_bar(description, total)` yields `advance(n=1)`. On a terminal it draws a `rich` bar on
stderr (count, total, rate, time left) and clears it when done; when stderr is not a terminal, or
with `enabled=False`, it draws nothing and `advance` does nothing.

Example:
    with progress_bar("exporting records", len(src)) as advance:
        for i in range(len(src)):
            ...
            advance()
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1)`; see the module docstring."""
    from rich.console import Console

    console = Console(file=sys.stderr)
    if not enabled or not console.is_terminal:
        yield lambda n=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f}/s" if task.speed else "")

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True, redirect_stdout=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
