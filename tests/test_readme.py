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
