"""TensorRT's published stubs, made readable by mypy: ``python tests/tensorrt_typing.py STUBS_DIR OUT_DIR``.

``tensorrt-stubs`` 10.13 is generated text, and a few of its signatures are not Python (a parameter named
``in``; a parameter without a default after ones with defaults), which mypy refuses for the whole package. Each
such ``def`` line keeps its name and return type and takes ``(self, *args: Any, **kwargs: Any)`` instead; every
other line is copied as it is. ``build.sh`` writes the result to ``.venv/tensorrt-typing`` and puts it on
``MYPYPATH``, so ``if TYPE_CHECKING: import tensorrt as trt`` checks the builder and the backend by signature.
The plugin module's sources are left out: ``tensorrt.plugin`` stays untyped (``Any``) for mypy.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

FILES = ("tensorrt/__init__.pyi", "tensorrt_bindings/__init__.pyi", "tensorrt_bindings/tensorrt.pyi")
_DEF = re.compile(r"^(?P<indent> *)def (?P<name>\w+)\((?P<params>.*)\)(?P<returns> -> .*)?:(?P<rest>.*)$")


def _parses(line: str) -> bool:
    try:
        ast.parse(line.strip() + ("" if line.rstrip().endswith("...") else " ..."))
    except SyntaxError:
        return False
    return True


def sanitize(text: str) -> tuple[str, int]:
    """``text`` with every unparseable one-line ``def`` loosened to ``*args, **kwargs``; and how many."""
    out, changed = [], 0
    for line in text.splitlines():
        match = _DEF.match(line)
        if match and not _parses(line):
            first = match["params"].split(",")[0].split(":")[0].strip()
            params = "self, *args: typing.Any, **kwargs: typing.Any" if first == "self" else "*args: typing.Any"
            params += "" if first == "self" else ", **kwargs: typing.Any"
            line = f"{match['indent']}def {match['name']}({params}){match['returns'] or ''}:{match['rest']}"
            changed += 1
        out.append(line)
    return "\n".join(out) + "\n", changed


def write_typing_stubs(stubs: Path, out: Path) -> int:
    """Write the sanitized stub files of ``stubs`` under ``out``; returns how many signatures were loosened."""
    changed = 0
    for relative in FILES:
        text, count = sanitize((stubs / relative).read_text())
        if "typing.Any" in text and not re.search(r"^import typing$", text, re.M):
            text = "import typing\n" + text
        ast.parse(text, filename=relative)  # fails here, naming the file, if a multi-line signature remains
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        changed += count
    return changed


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__.splitlines()[0])
    loosened = write_typing_stubs(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"tensorrt typing stubs in {sys.argv[2]}: {loosened} unparseable signatures loosened")
