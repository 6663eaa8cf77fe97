"""Every TensorRT name the project's Python code uses exists in TensorRT's published API (DESIGN.md §8).

There is no GPU (and no TensorRT) on the test machines, so code that drives TensorRT cannot run here. This test
reads every Python file of the repository (all stages, scripts and tests) and checks the names it reaches
through the TensorRT modules against the API description:

- ``tensorrt`` (``trt.X``, ``trt.X.Y``, ``from tensorrt import X``): the ``tensorrt-stubs`` package's ``.pyi``
  files, read as text (they are not all valid Python);
- ``tensorrt.plugin`` (``trtp.X``, ``trtp.X.Y``): the plugin module's own Python sources from the
  ``tensorrt-cu12-bindings`` wheel (the stubs do not cover it), parsed for the ``@public_api()`` exports;
- Polygraphy's TensorRT loaders (``from polygraphy.backend.trt import X``): the installed Polygraphy.

Both API packages are installed without their dependencies (they would pull TensorRT itself) into
``.venv/tensorrt-api`` by ``build.sh`` (see ``install_hint``). ``trt`` and ``trtp`` are always read as the
TensorRT modules in a file that imports TensorRT anywhere (the project's convention, also for function
parameters that receive them), besides any explicit ``import tensorrt as ...``.
"""

from __future__ import annotations

import ast
import importlib
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".venv", ".git", "build", "artifacts", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache"}
TRT, TRTP, POLYGRAPHY_TRT = "tensorrt", "tensorrt.plugin", "polygraphy.backend.trt"
CONVENTIONAL_ALIASES = {"trt": TRT, "trtp": TRTP}
MODULE_DUNDERS = {"__version__", "__file__", "__name__", "__doc__", "__path__", "__all__"}
STUB_PINS = "tensorrt-stubs==10.13.0.35.1 tensorrt-cu12-bindings==10.13.0.35"


def install_hint() -> str:
    return f"{sys.executable} -m pip install --no-deps --target {Path(sys.prefix) / 'tensorrt-api'} {STUB_PINS}"


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
    """Names of one module and, per class (dotted for nested classes), its members and bases."""

    names: set[str] = field(default_factory=set)
    members: dict[str, set[str]] = field(default_factory=dict)
    bases: dict[str, list[str]] = field(default_factory=dict)

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
                    if alias.name != "*" and alias.name not in apis[node.module].names:
                        problems.append(Problem(path, node.lineno, f"{node.module}.{alias.name}", node.module))
                    elif alias.name != "*":
                        aliases.setdefault(alias.asname or alias.name, f"{node.module}:{alias.name}")
                elif node.module == POLYGRAPHY_TRT and not hasattr(polygraphy, alias.name):
                    problems.append(Problem(path, node.lineno, f"{node.module}.{alias.name}", "Polygraphy TensorRT"))
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
        missing = _missing(apis[module], parts)
        if missing is not None:
            shown = len(written) - len(parts) + missing + 1
            problems.append(Problem(path, node.lineno, ".".join(written[:shown]), module))
    return sorted(set(problems), key=lambda p: (p.path, p.line, p.name))


def _missing(api: Api, parts: list[str]) -> int | None:
    """Index of the first name of ``parts`` that ``api`` lacks; deeper names are checked while each prefix
    is a class (an instance's attributes are not typed here, so the check stops at the first non-class)."""
    if not parts:
        return None
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
