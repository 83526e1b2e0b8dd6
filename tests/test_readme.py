"""The README's two opening commands are what CI runs, word for word."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[:2]


def test_ci_runs_the_readme_commands():
    install, test = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert install in ci, "the README's install command is not a line of .ci/run"
    assert test in ci, "the README's test command is not a line of .ci/run"
    assert ci.index(install) < ci.index(test)
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    interop = 'pip install -c constraints.txt ".[interop]"'
    assert f"```bash\n{interop}\n```" in text and interop in ci, "CI installs the interop extra as the README says"
    assert ci.index(install) < ci.index(interop) < ci.index(test)
    assert "lwm-pack demo" in install and "constraints.txt" in install


def _section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    return text[start : text.index("\n## ", start + 1)]


def test_books_stage_order_is_the_jobs():
    from lwmkit.pipelines.books.job import STAGES

    words = " ".join(_section("Building a corpus from your books").split())
    listed = words[words.index("The job's stages are read") :].split(" -> ")
    first_words = [re.sub(r"^The job's stages are ", "", part).split(" ")[0] for part in listed]
    named = ["dedup" if w == "exact" else w for w in first_words]
    assert [s for s in named if s in STAGES] == list(STAGES)


def test_videos_section_says_absolute_paths_need_allow_file_urls():
    words = " ".join(_section("Video-text pairs").split())
    assert "an absolute `path` (or a `file://` URL) is read only with `--allow-file-urls`" in words
