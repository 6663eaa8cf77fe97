"""TensorRT's published API per version, read without TensorRT (for tests/test_tensorrt_names.py).

- 10.13: ``tensorrt`` from the ``tensorrt-stubs`` ``.pyi`` files (classes and members, read as text: they are not
  all valid Python), ``tensorrt.plugin`` from its Python sources in the ``tensorrt-cu12-bindings`` wheel (its
  ``@public_api()`` exports);
- 10.3 (JetPack 6), 10.9 and 11.4: the bindings wheel's compiled module, read name by name from its string
  table (pybind11 keeps every bound name as a string; the linker may store one as the tail of another, so a
  name passes when it ends some string: members are not told apart from classes), plus the Python-defined
  names of the package's ``__init__.py``; ``tensorrt.plugin`` from the wheel's sources (10.9, 11.4).

Each is installed without its dependencies (TensorRT itself) into a folder of its own by ``build.sh``
(``install_hint``).
"""

from __future__ import annotations

import ast
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

TRT, TRTP = "tensorrt", "tensorrt.plugin"
MODULE_DUNDERS = {"__version__", "__file__", "__name__", "__doc__", "__path__", "__all__"}
STUB_PINS = "tensorrt-stubs==10.13.0.35.1 tensorrt-cu12-bindings==10.13.0.35"
#: The versions checked from a bindings wheel: version -> (pip requirement, has ``tensorrt.plugin`` AOT plugins).
WHEELS = {
    "10.3": ("tensorrt-cu12-bindings==10.3.0", False),
    "10.9": ("tensorrt-cu12-bindings==10.9.0.34", True),
    "11.4": ("tensorrt-cu13-bindings==11.4.0.106", True),
}
STUBS_VERSION = "10.13"


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
