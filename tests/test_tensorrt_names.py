"""Every TensorRT name the project's Python code uses exists in each TensorRT version it claims (DESIGN.md §8).

There is no GPU (and no TensorRT) on the test machines, so code that drives TensorRT cannot run here. This test
reads every Python file of the repository and checks the names it reaches through the TensorRT modules against
each version of the matrix (docs/plugins.md), from the API as published:

- 10.13: ``tensorrt`` from the ``tensorrt-stubs`` ``.pyi`` files (classes and members), ``tensorrt.plugin`` from
  its Python sources in the ``tensorrt-cu12-bindings`` wheel (the ``@public_api()`` exports);
- 10.3 (JetPack 6), 10.9 and 11.4: the bindings wheels' compiled module, read name by name from its string
  table (pybind11 keeps every bound name as a string; the linker may store one as the tail of another, so a
  name passes when it ends some string: members are not told apart from classes), plus the Python-defined
  names of the package's ``__init__.py``; ``tensorrt.plugin`` from the wheel's sources (10.9, 11.4).
- Polygraphy's TensorRT loaders: the installed Polygraphy (the minimum the project declares), names and the
  keyword arguments the code passes them.

``tensorrt.plugin`` names, and every name in ``AOT_ONLY`` files, are checked against the versions with
ahead-of-time plugins only. The API packages are installed without their dependencies into folders of their own
by ``build.sh`` (``install_hint``). ``trt`` and ``trtp`` are always read as the TensorRT modules in a file that
imports TensorRT anywhere (also for function parameters that receive them).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "build", "artifacts", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
TRT, TRTP, POLYGRAPHY_TRT = "tensorrt", "tensorrt.plugin", "polygraphy.backend.trt"
CONVENTIONAL_ALIASES = {"trt": TRT, "trtp": TRTP}
MODULE_DUNDERS = {"__version__", "__file__", "__name__", "__doc__", "__path__", "__all__"}
STUB_PINS = "tensorrt-stubs==10.13.0.35.1 tensorrt-cu12-bindings==10.13.0.35"
#: The versions checked from a bindings wheel: version -> (pip requirement, has ``tensorrt.plugin`` AOT plugins).
WHEELS = {
    "10.3": ("tensorrt-cu12-bindings==10.3.0", False),
    "10.9": ("tensorrt-cu12-bindings==10.9.0.34", True),
    "11.4": ("tensorrt-cu13-bindings==11.4.0.106", True),
}
STUBS_VERSION = "10.13"
#: Files whose TensorRT code runs only where the AOT plugins exist (TensorRT >= 10.9).
AOT_ONLY = {"plugins/tensorrt_plugin.py"}


def install_hint(version: str = STUBS_VERSION) -> str:
    if version == STUBS_VERSION:
        return f"{sys.executable} -m pip install --no-deps --target {Path(sys.prefix) / 'tensorrt-api'} {STUB_PINS}"
    target = Path(sys.prefix) / f"tensorrt-api-{version}"
    return f"{sys.executable} -m pip install --no-deps --target {target} {WHEELS[version][0]}"


def api_dir() -> Path | None:
    """Where the stubs and the plugin sources were installed, if anywhere."""
    candidates = [os.environ.get("VARED2_TENSORRT_API", ""), str(Path(sys.prefix) / "tensorrt-api")]
    candidates += [p for p in sys.path if p.endswith("site-packages")]
    for candidate in candidates:
        if candidate and (Path(candidate) / "tensorrt" / "__init__.pyi").is_file():
            return Path(candidate)
    return None


@dataclass
class Api:
    """Names of one module and, per class (dotted for nested classes), its members and bases; ``flat`` when
    only the names are known (a compiled module's string table): then every part of a dotted name must be one."""

    names: set[str] = field(default_factory=set)
    members: dict[str, set[str]] = field(default_factory=dict)
    bases: dict[str, list[str]] = field(default_factory=dict)
    flat: bool = False

    def has_member(self, cls: str, name: str) -> bool:
        seen: set[str] = set()
        todo = [cls]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if name in self.members.get(current, set()):
                return True
            todo += self.bases.get(current, [])
        return False


_CLASS = re.compile(r"^( *)class (\w+)(?:\((.*)\))?:")
_DEF = re.compile(r"^( *)def (\w+)\(")
_ATTR = re.compile(r"^( *)(\w+)\s*(?::|=)")


def read_stub_classes(text: str, api: Api) -> None:
    """Classes, nested classes and their members from a ``.pyi`` file, by indentation (docstrings skipped)."""
    stack: list[tuple[int, str]] = []  # (indent of the class line, dotted class name)
    in_doc = False
    for line in text.splitlines():
        quotes = line.count('"""')
        if in_doc:
            in_doc = quotes % 2 == 0
            continue
        if quotes % 2 == 1:
            in_doc = True
        if not line.strip() or quotes:
            continue
        indent = len(line) - len(line.lstrip())
        while stack and indent <= stack[-1][0]:
            stack.pop()
        owner = stack[-1][1] if stack else None
        if match := _CLASS.match(line):
            name = match.group(2)
            dotted = f"{owner}.{name}" if owner else name
            if owner:
                api.members.setdefault(owner, set()).add(name)
            else:
                api.names.add(name)
            bases = [b.strip().split(".")[-1] for b in (match.group(3) or "").split(",") if b.strip()]
            api.bases[dotted] = [b for b in bases if b]
            api.members.setdefault(dotted, set())
            stack.append((indent, dotted))
        elif (match := _DEF.match(line)) or (match := _ATTR.match(line)):
            (api.members.setdefault(owner, set()) if owner else api.names).add(match.group(2))


def read_module_names(text: str, api: Api) -> None:
    """Top-level names of a parseable stub or module: imports, definitions, assignments, ``__all__``."""
    tree = ast.parse(text)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom | ast.Import):
            api.names.update((a.asname or a.name).split(".")[0] for a in node.names if a.name != "*")
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            api.names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            api.names.update(t.id for t in targets if isinstance(t, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets) and node.value is not None:
                value = ast.literal_eval(node.value)
                api.names.update(value)


def _is_public_api(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    return isinstance(target, ast.Name) and target.id == "public_api"


def read_plugin_module(sources: list[str], api: Api) -> None:
    """``tensorrt.plugin`` exports whatever its sources decorate with ``@public_api()``; class members are
    methods, class attributes and ``self.x`` assignments."""
    for text in sources:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            tree = ast.parse(text)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.ClassDef) or not any(
                _is_public_api(d) for d in node.decorator_list
            ):
                continue
            api.names.add(node.name)
            if isinstance(node, ast.ClassDef):
                members = api.members.setdefault(node.name, set())
                api.bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]
                for item in ast.walk(node):
                    if isinstance(item, ast.FunctionDef):
                        members.add(item.name)
                    elif isinstance(item, ast.Attribute) and isinstance(item.value, ast.Name):
                        if item.value.id == "self" and isinstance(item.ctx, ast.Store):
                            members.add(item.attr)
                    elif isinstance(item, ast.AnnAssign | ast.Assign):
                        targets = item.targets if isinstance(item, ast.Assign) else [item.target]
                        members.update(t.id for t in targets if isinstance(t, ast.Name))
    api.names.update(MODULE_DUNDERS)


def read_compiled_module(so: Path, api: Api) -> None:
    """Every identifier-like NUL-terminated string of a compiled module, and all their tails (tail merging)."""
    for raw in re.findall(rb"[A-Za-z0-9_]+(?=\x00)", so.read_bytes()):
        text = raw.decode()
        api.names.update(text[i:] for i in range(len(text)) if not text[i].isdigit())


def load_wheel_apis(directory: Path, with_plugin: bool) -> dict[str, Api]:
    """The TensorRT API of one bindings wheel installed in ``directory`` (no stubs: its compiled module)."""
    bindings = directory / "tensorrt_bindings"
    so = next(iter(sorted(bindings.glob("tensorrt*.so"))), None)
    if so is None:
        raise FileNotFoundError(f"{bindings}: no compiled tensorrt module")
    trt = Api(flat=True)
    read_compiled_module(so, trt)
    read_module_names((bindings / "__init__.py").read_text(), trt)
    trt.names.update(MODULE_DUNDERS | {"plugin"})
    apis = {TRT: trt}
    if with_plugin:
        trtp = Api()
        read_plugin_module([p.read_text() for p in sorted((bindings / "plugin").glob("*.py"))], trtp)
        apis[TRTP] = trtp
    return apis


def load_apis(directory: Path) -> dict[str, Api]:
    trt = Api()
    read_module_names((directory / "tensorrt" / "__init__.pyi").read_text(), trt)
    bindings = directory / "tensorrt_bindings"
    read_stub_classes((bindings / "tensorrt.pyi").read_text(), trt)
    trt.names.update(MODULE_DUNDERS | {"plugin"})
    plugin_dir = bindings / "plugin"
    if not (plugin_dir / "__init__.py").is_file():
        raise FileNotFoundError(f"{plugin_dir}/__init__.py is missing; install it with: {install_hint()}")
    trtp = Api()
    read_plugin_module([p.read_text() for p in sorted(plugin_dir.glob("*.py"))], trtp)
    return {TRT: trt, TRTP: trtp}


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
        if not SKIP_DIRS.intersection(path.relative_to(ROOT).parts):
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


def test_every_tensorrt_name_in_the_project_exists(apis: dict[str, Api]) -> None:
    problems: list[str] = []
    scanned = 0
    for path in project_files():
        source = path.read_text()
        if not re.search(r"\btrtp?\b|tensorrt", source):
            continue
        scanned += 1
        problems += [str(p) for p in check_source(source, str(path.relative_to(ROOT)), apis)]
    assert scanned > 0, "no file mentions TensorRT: the scan found nothing to check"
    assert not problems, "\n".join(problems)


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
