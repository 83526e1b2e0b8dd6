"""Keeps the dependency direction of STYLE.md true, and the install free of bare top-level names.

Allowed imports between lwmkit's packages (A may import B):
    tokenizers, packing -> nothing else of lwmkit
    pipelines -> tokenizers, packing
    lwm_model -> packing
    eval -> lwm_model, tokenizers, packing
Nothing imports pipelines or eval. Packing, the text tokenizer and the pipelines import without JAX.
Inside pipelines/, the rule between its folders is the one its package docstring states.
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


def _imports_outside(path: Path, under: str, own: str, allowed: set[str]) -> list[tuple[int, str]]:
    """(line, target) of each import of `<under>.<target>[...]` in `path` where target is neither
    `own` nor in `allowed`."""
    depth = len(under.split("."))
    found = []
    for line, module in _imports(path):
        parts = module.split(".")
        if ".".join(parts[:depth]) == under and len(parts) > depth and parts[depth] not in {own, *allowed}:
            found.append((line, parts[depth]))
    return found


def _violations() -> list[str]:
    bad = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT)
            bad += [
                f"{rel}:{line}: bare import {module!r}; use lwmkit.{module}"
                for line, module in _imports(path)
                if module.split(".")[0] in PACKAGES
            ]
            bad += [f"{rel}:{line}: {pkg}/ may not import lwmkit.{t}" for line, t in _imports_outside(path, "lwmkit", pkg, ALLOWED[pkg])]
    return bad


def test_dependency_direction():
    assert _violations() == []


def _folder_rule() -> dict[str, set[str]]:
    """`folder -> a, b` lines of pipelines/__init__.py's docstring: what each folder may import."""
    doc = ast.get_docstring(ast.parse((ROOT / "pipelines" / "__init__.py").read_text(encoding="utf-8")))
    rule = {}
    for line in doc.splitlines():
        left, arrow, right = line.strip().partition(" ->")
        if arrow and left.isidentifier():
            rule[left] = {n.strip() for n in right.split(",") if n.strip()}
    return rule


def _folder_violations() -> list[str]:
    rule = _folder_rule()
    bad = []
    base = ROOT / "pipelines"
    for path in sorted(base.rglob("*.py")):
        rel = path.relative_to(base)
        if len(rel.parts) == 1:
            continue  # the package's own __init__.py loads public names lazily
        folder = rel.parts[0]
        if folder not in rule:
            bad.append(f"pipelines/{rel}: folder {folder!r} is not in the dependency rule")
            continue
        bad += [
            f"pipelines/{rel}:{line}: {folder}/ may not import lwmkit.pipelines.{t}"
            for line, t in _imports_outside(path, "lwmkit.pipelines", folder, rule[folder])
        ]
    return bad


def test_pipelines_folders_follow_their_rule():
    rule = _folder_rule()
    assert {"cli", "tools", "writing", "engine"} <= set(rule) and rule["engine"] == set()
    assert _folder_violations() == []


def test_folder_checker_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "root"
    (fake / "pipelines" / "engine").mkdir(parents=True)
    (fake / "pipelines" / "__init__.py").write_text((ROOT / "pipelines" / "__init__.py").read_text(encoding="utf-8"))
    (fake / "pipelines" / "engine" / "bad.py").write_text("from lwmkit.pipelines.books.job import run_books\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert _folder_violations() == ["pipelines/engine/bad.py:1: engine/ may not import lwmkit.pipelines.books"]


def test_checker_catches_a_forbidden_import(tmp_path, monkeypatch):
    # The check itself must be able to fail: plant a packing -> pipelines import in a copy.
    fake = tmp_path / "root"
    for pkg in PACKAGES:
        (fake / pkg).mkdir(parents=True)
    (fake / "packing" / "bad.py").write_text("from lwmkit.pipelines.books import job as books\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", fake)
    assert any("packing/ may not import lwmkit.pipelines" in v for v in _violations())


def test_light_modules_import_without_jax():
    code = (
        "import sys, json\n"
        "import lwmkit.packing, lwmkit.tokenizers, lwmkit.pipelines, lwmkit.pipelines.cli\n"
        "import lwmkit.pipelines.books.job, lwmkit.packing.source, lwmkit.pipelines.images.job, lwmkit.pipelines.qa.job\n"
        "import lwmkit.pipelines.engine.inference, lwmkit.eval, lwmkit.eval.cli, lwmkit.eval.cases, lwmkit.tokenizers.vision\n"
        "import lwmkit.lwm_model.train_cli, lwmkit.eval.inference.chat_cli, lwmkit.eval.inference.generate_cli\n"  # their errors come first
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


def test_pipelines_modules_import_no_private_names():
    # A module cut at a line count, not at a concept, shows up as another module importing its `_x`.
    bad = []
    for path in sorted((ROOT / "pipelines").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lwmkit."):
                bad += [f"{path.relative_to(ROOT)}:{node.lineno}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert bad == []


def test_pipelines_folders_and_modules_stay_small():
    """docs/architecture.md: no folder under pipelines/ holds more than 16 modules, no module passes 400 lines."""
    base = ROOT / "pipelines"
    crowded = {
        str(d.relative_to(ROOT)): n
        for d in [base, *(p for p in base.rglob("*") if p.is_dir() and p.name != "__pycache__")]
        if (n := len(list(d.glob("*.py")))) > 16
    }
    long = {str(p.relative_to(ROOT)): n for p in base.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert crowded == {} and long == {}


def test_setup_cfg_installs_every_package_folder():
    """A folder with an __init__.py that setup.cfg's `packages` leaves out would be missing from a
    non-editable install (`pip install .`, as CI and users install) though an editable one finds it."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    listed = set(cfg["options"]["packages"].split())
    folders = {
        "lwmkit." + ".".join(init.parent.relative_to(ROOT).parts)
        for top in PACKAGES
        for init in (ROOT / top).rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert folders - listed == set()
