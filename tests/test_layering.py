"""Keeps the dependency direction of STYLE.md true, and the install free of bare top-level names.

Allowed imports between lwmkit's packages (A may import B):
    tokenizers, packing -> nothing else of lwmkit
    pipelines -> tokenizers, packing
    lwm_model -> packing
    eval -> lwm_model, tokenizers, packing
Nothing imports pipelines or eval. Packing, the text tokenizer and the pipelines import without JAX.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("packing", "tokenizers", "pipelines", "lwm_model", "eval")
ALLOWED = {
    "packing": set(),
    "tokenizers": set(),
    "pipelines": {"tokenizers", "packing"},
    "lwm_model": {"packing"},
    "eval": {"lwm_model", "tokenizers", "packing"},
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use lwmkit.<package> imports")
    return found


def _violations() -> list[str]:
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for line, module in _imports(path):
                parts = module.split(".")
                if parts[0] in PACKAGES:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: bare import {module!r}; use lwmkit.{module}")
                    continue
                if parts[0] != "lwmkit" or len(parts) < 2:
                    continue
                target = parts[1]
                if target != pkg and target not in ALLOWED[pkg]:
                    bad.append(f"{path.relative_to(ROOT)}:{line}: {pkg}/ may not import lwmkit.{target}")
    return bad


def test_dependency_direction():
    assert _violations() == []


def test_checker_catches_a_forbidden_import(tmp_path, monkeypatch):
    # The check itself must be able to fail: plant a packing -> pipelines import in a copy.
    fake = tmp_path / "root"
    for pkg in PACKAGES:
        (fake / pkg).mkdir(parents=True)
    (fake / "packing" / "bad.py").write_text("from lwmkit.pipelines import books\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert any("packing/ may not import lwmkit.pipelines" in v for v in _violations())


def test_light_modules_import_without_jax():
    code = (
        "import sys, json\n"
        "import lwmkit.packing, lwmkit.tokenizers, lwmkit.pipelines, lwmkit.pipelines.cli\n"
        "import lwmkit.pipelines.books, lwmkit.packing.source, lwmkit.pipelines.image_text, lwmkit.pipelines.qa\n"
        "import lwmkit.pipelines.inference, lwmkit.eval, lwmkit.eval.cli, lwmkit.eval.cases, lwmkit.tokenizers.vision\n"
        "import lwmkit.lwm_model.train_cli, lwmkit.eval.chat_cli, lwmkit.eval.generate_cli\n"  # their errors come first
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'grain'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_install_claims_no_bare_top_level_names(tmp_path):
    # Run from a neutral directory so the checkout itself is not on sys.path.
    code = (
        "import importlib.util, importlib.metadata, json, lwmkit.packing\n"
        "dist = importlib.metadata.distribution('lwmkit')\n"
        "top = sorted({str(f).split('/')[0] for f in (dist.files or []) if not str(f).startswith('lwmkit')})\n"
        "names = ('tokenizers', 'eval', 'pipelines', 'packing')\n"
        "spec = {n: (importlib.util.find_spec(n).origin if importlib.util.find_spec(n) else None) for n in names}\n"
        "owners = {n: importlib.metadata.packages_distributions().get(n, []) for n in names}\n"
        "print(json.dumps({'top': top, 'spec': spec, 'owners': owners, 'pkg': list(lwmkit.packing.__path__)}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # Only metadata folders besides lwmkit/ (e.g. lwmkit-0.1.0.dist-info, an editable install's files).
    assert all(t.startswith(("lwmkit", "__editable__", "..", "__pycache__")) for t in result["top"]), result["top"]
    for name, origin in result["spec"].items():
        # Another distribution may provide it (Hugging Face's tokenizers); lwmkit must not, and the
        # checkout's own folder must not be what imports under that name. (Where the checkout or its
        # virtual environment lives, e.g. a folder called lwmkit, does not matter.)
        assert "lwmkit" not in result["owners"][name], (name, result["owners"][name])
        assert origin is None or not origin.startswith(str(ROOT / name) + os.sep), (name, origin)


@pytest.mark.parametrize("pkg", PACKAGES)
def test_every_package_has_a_docstring(pkg):
    init = ROOT / pkg / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} needs a docstring"
