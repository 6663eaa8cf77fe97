"""Every TensorRT name the project's Python code uses exists in each TensorRT version it claims (DESIGN.md §8).

There is no GPU (and no TensorRT) on the test machines, so code that drives TensorRT cannot run here. This test
reads every Python file of the repository and checks the names it reaches through the TensorRT modules against
each version of the matrix (docs/plugins.md), read from the API as published (``tensorrt_api``), and Polygraphy's
TensorRT loaders against the installed Polygraphy (the minimum the project declares): names and the keyword
arguments the code passes them.

``tensorrt.plugin`` names, and every name in ``AOT_ONLY`` files, are checked against the versions with
ahead-of-time plugins only. ``trt`` and ``trtp`` are always read as the TensorRT modules in a file that imports
TensorRT anywhere (also for function parameters that receive them).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from tensorrt_api import (
    STUBS_VERSION,
    TRT,
    TRTP,
    WHEELS,
    Api,
    api_dir,
    install_hint,
    load_apis,
    load_wheel_apis,
)

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "build", "artifacts", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
POLYGRAPHY_TRT = "polygraphy.backend.trt"
CONVENTIONAL_ALIASES = {"trt": TRT, "trtp": TRTP}
#: Files whose TensorRT code runs only where the AOT plugins exist (TensorRT >= 10.9).
AOT_ONLY = {"plugins/tensorrt_plugin.py"}


@dataclass(frozen=True)
class Problem:
    path: str
    line: int
    name: str
    module: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.name} is not in the {self.module} API"


def _chain(node: ast.expr) -> tuple[str, list[str]] | None:
    """``a.b.c`` -> ("a", ["b", "c"]); None when the base is not a plain name."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return node.id, parts[::-1]


def check_source(source: str, path: str, apis: dict[str, Api]) -> list[Problem]:
    """The TensorRT names ``source`` uses that the API description lacks."""
    tree = ast.parse(source, filename=path)
    _mark_parents(tree)
    imports_tensorrt = any(
        (isinstance(n, ast.Import) and any(a.name.split(".")[0] == TRT for a in n.names))
        or (isinstance(n, ast.ImportFrom) and (n.module or "").split(".")[0] == TRT)
        for n in ast.walk(tree)
    )
    aliases = dict(CONVENTIONAL_ALIASES) if imports_tensorrt else {}
    problems: list[Problem] = []
    polygraphy = importlib.import_module(POLYGRAPHY_TRT)
    loaders: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in (TRT, TRTP):
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else TRT
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                if node.module == TRT and alias.name == "plugin":
                    aliases[alias.asname or "plugin"] = TRTP
                elif node.module in (TRT, TRTP):
                    if node.module not in apis:  # tensorrt.plugin in a version without it: not claimed there
                        continue
                    if alias.name != "*" and alias.name not in apis[node.module].names:
                        problems.append(Problem(path, node.lineno, f"{node.module}.{alias.name}", node.module))
                    elif alias.name != "*":
                        aliases.setdefault(alias.asname or alias.name, f"{node.module}:{alias.name}")
                elif node.module == POLYGRAPHY_TRT and not hasattr(polygraphy, alias.name):
                    problems.append(Problem(path, node.lineno, f"{node.module}.{alias.name}", "Polygraphy TensorRT"))
                elif node.module == POLYGRAPHY_TRT:
                    loaders[alias.asname or alias.name] = getattr(polygraphy, alias.name)
    problems += _polygraphy_keywords(tree, path, loaders)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or isinstance(getattr(node, "parent_attr", None), ast.Attribute):
            continue
        found = _chain(node)
        if found is None or found[0] not in aliases:
            continue
        base, parts = found
        written = [base, *parts]
        module = aliases[base]
        if ":" in module:  # a class imported by name: ``from tensorrt import Logger`` then ``Logger.WARNING``
            module, cls = module.split(":")
            parts = [cls, *parts]
        if module == TRT and parts[0] == "plugin":
            module, parts = TRTP, parts[1:]
        if module not in apis:
            continue
        missing = _missing(apis[module], parts)
        if missing is not None:
            shown = len(written) - len(parts) + missing + 1
            problems.append(Problem(path, node.lineno, ".".join(written[:shown]), module))
    return sorted(set(problems), key=lambda p: (p.path, p.line, p.name))


def _polygraphy_keywords(tree: ast.AST, path: str, loaders: dict[str, Any]) -> list[Problem]:
    """Keyword arguments passed to Polygraphy's loaders that their constructors do not take."""
    problems = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in loaders):
            continue
        parameters = inspect.signature(loaders[node.func.id]).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            continue
        for keyword in node.keywords:
            if keyword.arg is not None and keyword.arg not in parameters:
                name = f"{node.func.id}({keyword.arg}=)"
                problems.append(Problem(path, node.lineno, name, "Polygraphy TensorRT"))
    return problems


def _missing(api: Api, parts: list[str]) -> int | None:
    """Index of the first name of ``parts`` that ``api`` lacks; deeper names are checked while each prefix
    is a class (an instance's attributes are not typed here, so the check stops at the first non-class), or
    each on its own in a flat API."""
    if not parts:
        return None
    if api.flat:
        return next((i for i, name in enumerate(parts) if name not in api.names), None)
    if parts[0] not in api.names:
        return 0
    owner = parts[0]
    for index, name in enumerate(parts[1:], start=1):
        if owner not in api.members:
            return None
        if not api.has_member(owner, name):
            return index
        owner = f"{owner}.{name}"
    return None


def _mark_parents(tree: ast.AST) -> None:
    for parent in ast.walk(tree):
        if isinstance(parent, ast.Attribute):
            parent.value.parent_attr = parent  # type: ignore[attr-defined]


def project_files() -> list[Path]:
    files = []
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT).parts
        # Virtual environments (.venv, .venv-triton, …) hold other projects' code, not ours.
        if not SKIP_DIRS.intersection(parts) and not parts[0].startswith(".venv"):
            files.append(path)
    return sorted(files)


@pytest.fixture(scope="module")
def apis() -> dict[str, Api]:
    directory = api_dir()
    if directory is None:
        pytest.fail(f"the TensorRT API stubs are not installed; install them with:\n  {install_hint()}")
    return load_apis(directory)


def test_api_description_is_complete_enough(apis: dict[str, Api]) -> None:
    trt, trtp = apis[TRT], apis[TRTP]
    assert {"Builder", "Logger", "OnnxParser", "Runtime", "BuilderFlag", "__version__"} <= trt.names
    assert trt.has_member("Logger", "WARNING") and trt.has_member("BuilderFlag", "FP16")
    assert trt.has_member("IConvolutionLayer", "name")  # inherited from ILayer
    assert {"register", "aot_impl", "autotune", "TensorDesc", "KernelLaunchParams", "SymInt32"} <= trtp.names
    assert trtp.has_member("TensorDesc", "like") and trtp.has_member("KernelLaunchParams", "grid_x")


def test_checker_catches_misspelled_names(apis: dict[str, Api]) -> None:
    snippet = (
        "import tensorrt as trt\n"
        "import tensorrt.plugin as tp\n"
        "from tensorrt import Logger, Runtme\n"
        "from polygraphy.backend.trt import EngineFromNetwork, EngineFromNetwrk\n"
        "logger = trt.Logger(trt.Logger.WARNING)\n"
        "builder = trt.Bulder(logger)\n"
        "flag = trt.BuilderFlag.FP61\n"
        "level = Logger.VERBOSE\n"
        "params = tp.KernelLaunchParms()\n"
        "desc = tp.TensorDesc.like\n"
        "bad = tp.TensorDesc.lke\n"
        "also = trt.plugin.aot_implement\n"
        "kind = trtp.SymInt32\n"
    )
    found = [str(p) for p in check_source(snippet, "snippet.py", apis)]
    assert found == [
        "snippet.py:3: tensorrt.Runtme is not in the tensorrt API",
        "snippet.py:4: polygraphy.backend.trt.EngineFromNetwrk is not in the Polygraphy TensorRT API",
        "snippet.py:6: trt.Bulder is not in the tensorrt API",
        "snippet.py:7: trt.BuilderFlag.FP61 is not in the tensorrt API",
        "snippet.py:9: tp.KernelLaunchParms is not in the tensorrt.plugin API",
        "snippet.py:11: tp.TensorDesc.lke is not in the tensorrt.plugin API",
        "snippet.py:12: trt.plugin.aot_implement is not in the tensorrt.plugin API",
    ]


@pytest.fixture(scope="module")
def matrix(apis: dict[str, Api]) -> dict[str, dict[str, Api]]:
    """The API of every version the code claims: 10.13 from the stubs, the others from their bindings wheels."""
    directory = api_dir()
    assert directory is not None
    versions = {STUBS_VERSION: apis}
    for version, (_, with_plugin) in WHEELS.items():
        folder = directory.parent / f"tensorrt-api-{version}"
        if not (folder / "tensorrt_bindings" / "__init__.py").is_file():
            pytest.fail(f"TensorRT {version}'s API is not installed; install it with:\n  {install_hint(version)}")
        versions[version] = load_wheel_apis(folder, with_plugin)
    return versions


def test_the_matrix_tells_the_versions_apart(matrix: dict[str, dict[str, Api]]) -> None:
    """What the issue says of each version, read from the packages themselves (a broken reader fails here)."""
    old, aot, new = matrix["10.3"][TRT], matrix["10.9"][TRT], matrix["11.4"][TRT]
    removed_in_11 = {"FP16", "platform_has_fast_fp16", "IStreamReader"}
    assert removed_in_11 <= old.names and removed_in_11 <= aot.names and not removed_in_11 & new.names
    assert "set_output_type" not in new.names  # (in 10.x it may only be seen as the tail of reset_output_type)
    assert {"STRONGLY_TYPED", "execute_async_v3", "set_tensor_address", "IStreamReaderV2"} <= new.names
    assert "ENABLE_PLUGIN_OVERRIDE" in new.names and "ENABLE_PLUGIN_OVERRIDE" not in aot.names  # 10.15+
    assert "QuickPluginCreationRequest" in aot.names and "QuickPluginCreationRequest" not in old.names
    assert TRTP not in matrix["10.3"] and {"aot_impl", "KernelLaunchParams"} <= matrix["11.4"][TRTP].names
    snippet = "import tensorrt as trt\nflag = trt.BuilderFlag.FP16\nmode = trt.BuilderFlag.STRONGLY_TYPD\n"
    assert [str(p) for p in check_source(snippet, "s.py", matrix["11.4"])] == [
        "s.py:2: trt.BuilderFlag.FP16 is not in the tensorrt API",
        "s.py:3: trt.BuilderFlag.STRONGLY_TYPD is not in the tensorrt API",
    ]
    assert [p.line for p in check_source(snippet, "s.py", matrix["10.3"])] == [3]


def test_every_tensorrt_name_exists_in_every_claimed_version(matrix: dict[str, dict[str, Api]]) -> None:
    problems: list[str] = []
    for path in project_files():
        source = path.read_text()
        if not re.search(r"\btrtp?\b|tensorrt", source):
            continue
        relative = path.relative_to(ROOT).as_posix()
        for version, apis in matrix.items():
            if relative in AOT_ONLY and TRTP not in apis:
                continue
            problems += [f"TensorRT {version}: {p}" for p in check_source(source, relative, apis)]
    assert not problems, "\n".join(problems)


PRECISION_KEYWORDS = {"fp16", "int8", "bf16", "fp8", "tf32", "precision_constraints"}
NETWORK_LOADERS = {"NetworkFromOnnxPath", "NetworkFromOnnxBytes", "CreateNetwork"}


def strongly_typed_problems(source: str, path: str) -> list[str]:
    """Polygraphy calls that are not strongly typed: a network loader without ``strongly_typed=True``, or a
    ``CreateConfig`` given a precision (TensorRT 11 has no builder precision flags)."""
    problems = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            continue
        keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
        if node.func.id in NETWORK_LOADERS:
            typed = keywords.get("strongly_typed")
            if not (isinstance(typed, ast.Constant) and typed.value is True):
                problems.append(f"{path}:{node.lineno}: {node.func.id} without strongly_typed=True")
        elif node.func.id == "CreateConfig" and PRECISION_KEYWORDS & set(keywords):
            flags = sorted(PRECISION_KEYWORDS & set(keywords))
            problems.append(f"{path}:{node.lineno}: CreateConfig with precision flags {flags}")
    return problems


def test_every_network_is_strongly_typed() -> None:
    snippet = (
        "n = NetworkFromOnnxBytes(b)\n"
        "c = CreateConfig(fp16=True, profiles=[])\n"
        "m = CreateNetwork(strongly_typed=True)\n"
    )
    assert strongly_typed_problems(snippet, "s.py") == [
        "s.py:1: NetworkFromOnnxBytes without strongly_typed=True",
        "s.py:2: CreateConfig with precision flags ['fp16']",
    ]
    problems, loaders = [], 0
    for path in project_files():
        source = path.read_text()
        if "polygraphy" in source and path.name != Path(__file__).name:
            loaders += sum(source.count(name + "(") for name in NETWORK_LOADERS)
            problems += strongly_typed_problems(source, str(path.relative_to(ROOT)))
    assert loaders > 0 and not problems, "\n".join(problems)


def test_polygraphy_keywords_are_checked(apis: dict[str, Api]) -> None:
    snippet = (
        "from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxBytes\n"
        "n = NetworkFromOnnxBytes(b, strongly_typed=True)\n"
        "m = NetworkFromOnnxBytes(b, strongly_typd=True)\n"
        "c = CreateConfig(profiles=[], load_timing_cache='t')\n"
    )
    assert [str(p) for p in check_source(snippet, "s.py", apis)] == [
        "s.py:3: NetworkFromOnnxBytes(strongly_typd=) is not in the Polygraphy TensorRT API"
    ]


def test_mypy_checks_tensorrt_calls_by_signature(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``tests/tensorrt_typing.py`` makes the published stubs readable by mypy (build.sh puts the result on
    MYPYPATH): a wrong call on a TensorRT object is then an error, not ``Any``."""
    api = pytest.importorskip("mypy.api")
    from tensorrt_typing import write_typing_stubs

    directory = api_dir()
    if directory is None:
        pytest.fail(f"the TensorRT API stubs are not installed; install them with:\n  {install_hint()}")
    assert write_typing_stubs(directory, tmp_path / "typing") > 0  # the stubs' unparseable lines were loosened
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    import tensorrt as trt\n"
        "def run(context: trt.IExecutionContext) -> bool:\n"
        "    context.set_input_shape('clip', (1, 8))\n"
        "    context.set_tensor_address('clip', 'not an address')\n"
        "    return context.execute_async_v4(0)\n"
    )
    monkeypatch.setenv("MYPYPATH", str(tmp_path / "typing"))
    out, _, status = api.run(["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(probe)])
    errors = [line.split(": error: ")[0].rsplit(":", 1)[-1] for line in out.splitlines() if ": error: " in line]
    assert status == 1 and errors == ["7", "8"], out
