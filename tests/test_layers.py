"""The package's layers, and the README's map of them, stay what they say."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "signaling"
README = ROOT / "README.rst"

#: What each layer may import from the package (besides itself).
ALLOWED = {
    "core": set(),
    "wire": {"core", "logs"},
    "web": {"core", "wire", "logs"},
    "backplane": {"core", "logs"},
    "access": {"core", "logs"},
}
#: Libraries the pure layer must not import.
FRAMEWORKS = ("twisted", "autobahn", "txaio", "OpenSSL", "zope", "prometheus_client")


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Absolute names of the modules ``path`` imports (relative ones resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def layer_of(name: str) -> str | None:
    parts = name.split(".")
    if parts[0] != "signaling" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(layer: str) -> None:
    wrong = []
    for path in (PACKAGE / layer).rglob("*.py"):
        for name in imported(path):
            other = layer_of(name)
            if other not in (None, layer) and other in {p.name for p in PACKAGE.iterdir()} | {
                "logs"
            }:
                if other not in ALLOWED[layer]:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_no_framework() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in (PACKAGE / "core").rglob("*.py")
        for name in imported(path)
        if name.split(".")[0] in FRAMEWORKS
    ]
    assert not wrong, "\n".join(wrong)


def test_importing_the_core_loads_neither_twisted_nor_autobahn() -> None:
    """What the interpreter really loads, imports of imports included."""
    core = ["signaling.core." + path.stem for path in (PACKAGE / "core").glob("*.py")]
    script = (
        "import sys\n"
        + "".join(f"import {name}\n" for name in core)
        + f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({FRAMEWORKS!r})))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def layout_section() -> str:
    text = README.read_text()
    start = text.index("\nLayout\n------\n")
    end = text.index("\n------", start + len("\nLayout\n------\n"))
    return text[start:end]


def test_the_readme_layout_names_every_module_and_only_real_ones() -> None:
    named = set(re.findall(r"``(signaling/[\w/]+\.py)``", layout_section()))
    real = {
        str(path.relative_to(ROOT))
        for path in modules()
        # a package's __init__ that is only its docstring says nothing of its own
        if not (path.name == "__init__.py" and len(path.read_text().splitlines()) <= 2)
    }
    assert named - real == set(), "named in README.rst's Layout but missing"
    assert real - named == set(), "modules README.rst's Layout does not name"


def test_where_to_look_points_at_real_names() -> None:
    pointers = re.findall(
        r"^- where [^:]+: ``(signaling/[\w/]+\.py)``, ``([\w.]+)``$", layout_section(), re.M
    )
    assert len(pointers) == 4
    for path, name in pointers:
        tree = ast.parse((ROOT / path).read_text())
        defined = {
            f"{node.name}.{item.name}" if item is not node else node.name
            for node in tree.body
            if isinstance(node, ast.ClassDef | ast.FunctionDef)
            for item in [node, *getattr(node, "body", [])]
            if isinstance(item, ast.ClassDef | ast.FunctionDef)
        }
        assert name in defined, f"{path} defines no {name}"
