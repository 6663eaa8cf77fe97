"""The package layout of DESIGN.md §1: stages map into ``vared2``, imports run downward only, and the
runtime never imports torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["formats", "models", "plugins", "export", "engines", "runtime", "bench", "serve"]

# What each stage may import from the others (DESIGN.md §1). Every stage may import the torch-free formats layer,
# which imports no stage; the engine builders may use the plugins.
ALLOWED: dict[str, set[str]] = {
    "formats": set(),
    "plugins": {"formats"},
    "models": {"plugins", "formats"},
    "export": {"models", "plugins", "formats"},
    "engines": {"plugins", "formats"},
    "runtime": {"formats"},
    "bench": {"runtime", "formats"},
    "serve": {"runtime", "formats"},
}
#: The third-party packages the formats layer may import (it is the runtime's too: no torch, no onnx). tqdm is a
#: core dependency of the package (progress of long steps, formats/progress.py), as light as numpy.
FORMATS_THIRD_PARTY = {"numpy", "onnxruntime", "av", "tqdm"}


def stage_of(module: str) -> str | None:
    """``vared2.formats.manifest`` → ``formats``; ``vared2.models.y`` → ``models``."""
    parts = module.split(".")
    if parts[0] != "vared2" or len(parts) < 2 or parts[1] not in STAGES:
        return None
    return parts[1]


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of everything ``path`` imports; relative imports are resolved against the file's package
    (``root/<stage>/x.py`` and ``root/<stage>/__init__.py`` are in package ``vared2.<stage>``)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ["vared2", *path.parent.relative_to(root).parts]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module or ""
            else:
                if node.level > len(package):
                    raise ValueError(f"{path}: relative import beyond the top-level package (level {node.level})")
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, node.module] if node.module else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def package_files(stage: str) -> list[Path]:
    # Scripts under bench/scripts/ are top-level programs, like the CLI, and may use any stage.
    return [p for p in (ROOT / stage).rglob("*.py") if "scripts" not in p.relative_to(ROOT).parts]


@pytest.mark.parametrize("stage", STAGES)
def test_imports_run_downward(stage: str) -> None:
    problems = []
    for path in package_files(stage):
        own = stage
        for module in imported_modules(path):
            if module == "vared2" or module.startswith("vared2.cli"):
                problems.append(f"{path.relative_to(ROOT)} imports the root package/CLI ({module})")
                continue
            target = stage_of(module)
            if target is None or target == own:
                continue
            if target not in ALLOWED[own]:
                problems.append(f"{path.relative_to(ROOT)} imports {module} ({own} may not import {target})")
    assert not problems, "\n".join(problems)


def test_formats_imports_only_what_the_runtime_installs() -> None:
    """The bottom layer's third-party imports: what the runtime extra installs, and nothing heavier."""
    problems = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in package_files("formats")
        for module in imported_modules(path)
        if not module.startswith("vared2")
        and module.split(".")[0] not in FORMATS_THIRD_PARTY | set(sys.stdlib_module_names) | {"__future__"}
    ]
    assert not problems, "\n".join(problems)


def test_stages_are_importable_as_vared2_subpackages() -> None:
    import importlib

    for stage in STAGES:
        module = importlib.import_module(f"vared2.{stage}")
        assert Path(module.__file__ or "").resolve().parent == ROOT / stage


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_is_linked_into_the_package(stage: str) -> None:
    """mypy, pyright and editors follow ``vared2.<stage>`` through a committed relative link, with no install step."""
    link = ROOT / "vared2" / stage
    assert link.is_symlink(), f"vared2/{stage} must be a symbolic link to ../{stage}"
    assert Path(link.readlink()) == Path("..") / stage


def test_the_source_tree_imports_without_an_install(tmp_path: Path) -> None:
    """With the repository on the path and the installed packages but no editable install (``-S``: no ``.pth``
    file runs), every stage resolves inside the repository."""
    import sysconfig

    packages = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    code = f"import importlib, sys\nsys.path += {packages!r}\n" + "".join(
        f"print(importlib.import_module('vared2.{stage}').__file__)\n" for stage in STAGES
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for line, stage in zip(out.stdout.split(), STAGES, strict=True):
        assert Path(line).resolve().parent == ROOT / stage


@pytest.mark.parametrize("stage", ["runtime", "formats", "serve"])
def test_runtime_never_imports_torch(stage: str) -> None:
    """Nor do the formats layer under it and serving above it (DESIGN.md §10: the server tier has no torch)."""
    modules = sorted(f"vared2.{stage}.{p.stem}" for p in (ROOT / stage).glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in ['vared2.{stage}', *{modules!r}]:\n"
        "    importlib.import_module(name)\n"
        "heavy = sorted(m for m in ('torch', 'torchvision', 'onnx', 'triton', 'tensorrt') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"vared2.{stage} pulled in: {out.stdout.strip()}"


def test_nothing_imports_the_cli() -> None:
    """DESIGN.md §1: the root package's other modules (the main job, the GPU tier) share what they need with the
    command line through ``vared2.stages``, not by importing it."""
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for path in [*(ROOT / "vared2").glob("*.py"), *(p for stage in STAGES for p in package_files(stage))]
        if path.name not in {"cli.py", "__main__.py"}
        for module in imported_modules(path)
        if module == "vared2.cli" or module.startswith("vared2.cli.")
    ]
    assert not offenders, offenders
