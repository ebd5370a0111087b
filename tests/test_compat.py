"""Autobahn's and Twisted's internals are used in signaling/wire/compat.py
alone, and its start-up check finds what a release lacks."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import autobahn.websocket.protocol as autobahn_protocol
import pytest
from twisted.internet import tcp
from twisted.logger import LogLevel, formatEvent

import signaling
from bench.twistd import source_env
from signaling.wire import compat
from signaling.wire.compat import ALL_FAST_PATHS, FastPaths

from .conftest import RunningServer, on_reactor
from .traffic import exchange

PACKAGE = Path(signaling.__file__).parent
COMPAT = PACKAGE / "wire" / "compat.py"
#: The libraries whose private names only compat.py may use.
LIBRARIES = ("autobahn", "twisted", "txaio")


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


@dataclass
class Module:
    path: Path
    name: str
    tree: ast.Module


def package_modules() -> list[Module]:
    return [
        Module(path, _module_name(path), ast.parse(path.read_text(), str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def _targets(node: ast.AST) -> Iterator[ast.expr]:
    if isinstance(node, ast.Assign):
        yield from node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        yield node.target
    elif isinstance(node, ast.Delete):
        yield from node.targets


def _flat(targets: Iterator[ast.expr]) -> Iterator[ast.expr]:
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            yield from _flat(iter(target.elts))
        else:
            yield target


def class_definitions(cls: ast.ClassDef) -> set[str]:
    """The names a class of ours defines: in its body, and as attributes of
    ``self`` (or ``cls``) in its methods."""
    names: set[str] = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        for target in _flat(_targets(node)):
            if isinstance(target, ast.Name):
                names.add(target.id)
    for method in cls.body:
        if not isinstance(method, (ast.FunctionDef, ast.AsyncFunctionDef)) or not method.args.args:
            continue
        me = method.args.args[0].arg
        for inner in ast.walk(method):
            for target in _flat(_targets(inner)):
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == me
                ):
                    names.add(target.attr)
    return names


def own_names(modules: list[Module]) -> set[str]:
    """Every attribute name the package's own classes define, in any module
    (compat.py too)."""
    return {
        name
        for module in modules
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ClassDef)
        for name in class_definitions(node)
    }


def _library(module: str | None) -> bool:
    return module is not None and module.split(".")[0] in LIBRARIES


def library_modules_bound(tree: ast.Module) -> set[str]:
    """The local names that an import binds to a module of the libraries."""
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name):
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and _library(node.module):
            for alias in node.names:
                try:
                    value = getattr(importlib.import_module(node.module or ""), alias.name)
                except (ImportError, AttributeError):
                    continue
                if inspect.ismodule(value):
                    bound.add(alias.asname or alias.name)
    return bound


def _library_defines(cls: type, name: str) -> str | None:
    """Where a library class in ``cls``'s MRO defines or sets ``name``."""
    for base in cls.__mro__:
        if not _library(base.__module__):
            continue
        if name in vars(base):
            return f"{base.__module__}.{base.__qualname__}.{name}"
        try:
            source = inspect.getsource(base)
        except (OSError, TypeError):
            continue
        if re.search(rf"\bself\.{re.escape(name)}\b", source):
            return f"{base.__module__}.{base.__qualname__} (self.{name})"
    return None


def violations(module: Module, own: set[str], classes: bool = True) -> list[str]:
    """Each use in ``module`` of a private name that is not the package's own,
    and each change to a library module's globals."""
    found: list[str] = []

    def at(node: ast.AST, what: str) -> None:
        found.append(f"{module.path.name}:{getattr(node, 'lineno', '?')}: {what}")

    library_modules = library_modules_bound(module.tree)
    for node in ast.walk(module.tree):
        if isinstance(node, ast.ImportFrom) and _library(node.module):
            for alias in node.names:
                if _private(alias.name):
                    at(node, f"imports {node.module}.{alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _library(alias.name) and any(_private(p) for p in alias.name.split(".")):
                    at(node, f"imports {alias.name}")
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            at(node, f"uses .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(args) >= 2:
                name = args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    if _private(name.value) and name.value not in own:
                        at(node, f"{node.func.id}(..., {name.value!r})")
                if node.func.id in ("setattr", "delattr") and (
                    isinstance(args[0], ast.Name) and args[0].id in library_modules
                ):
                    at(node, f"{node.func.id} on the module {args[0].id}")
        for target in _flat(_targets(node)):
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id in library_modules
            ):
                at(node, f"changes {target.value.id}.{target.attr}")
    if classes:
        imported = importlib.import_module(module.name)
        for statement in module.tree.body:
            if not isinstance(statement, ast.ClassDef):
                continue
            cls = getattr(imported, statement.name)
            for defined in sorted(class_definitions(statement)):
                where = _library_defines(cls, defined) if _private(defined) else None
                if where is not None:
                    at(statement, f"{statement.name} defines {defined}, which is {where}")
    return found


def test_only_compat_uses_library_internals() -> None:
    modules = package_modules()
    own = own_names(modules)
    found = [v for m in modules if m.path != COMPAT for v in violations(m, own)]
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        "from autobahn.websocket.protocol import _is_same_origin",
        "def f(transport):\n    return transport._tempDataLen",
        "def f(endpoint):\n    return getattr(endpoint, '_sslContextFactory', None)",
        "import autobahn.websocket.protocol as ab\nab.pformat = repr",
        "from autobahn.websocket import protocol\nsetattr(protocol, 'hltype', repr)",
    ],
    ids=["private-import", "private-attribute", "getattr", "module-global", "setattr-global"],
)
def test_the_scan_finds_each_kind_of_use(source: str) -> None:
    """What the package did before compat.py existed is found."""
    module = Module(PACKAGE / "example.py", "signaling.example", ast.parse(source))
    assert violations(module, own_names(package_modules()), classes=False)


class _Reaching(autobahn_protocol.WebSocketServerProtocol):
    def remember(self, key: str) -> None:
        self._wskey = key  # set by Autobahn's processHandshake


def test_the_scan_finds_a_class_that_sets_a_library_attribute() -> None:
    """Our own classes may not define, and so change, what their library
    bases define or set (a class attribute or one Autobahn sets on self)."""
    node = ast.parse(inspect.getsource(_Reaching)).body[0]
    assert isinstance(node, ast.ClassDef)
    assert _library_defines(_Reaching, "_wskey") is not None
    assert "_wskey" in class_definitions(node)


# -- the start-up check --------------------------------------------------------


def test_the_installed_releases_pass_the_check(
    reactor_thread: Any, events: list[dict[str, Any]]
) -> None:
    assert on_reactor(compat.problems) == {}
    assert on_reactor(compat.check) == ALL_FAST_PATHS
    assert not [e for e in events if e.get("log_namespace") == "signaling.wire.compat"]


def _remove_url_to_origin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(autobahn_protocol, "_url_to_origin")


def _remove_tcp_server(monkeypatch: pytest.MonkeyPatch) -> None:
    # Listening ports keep their own reference to the class.
    monkeypatch.delattr(tcp, "Server")


def _rename_current_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    # As if Autobahn kept the frame it reads under another name.
    real = autobahn_protocol.WebSocketProtocol.processData

    def process_data(self: Any) -> Any:
        self.current_frame = self.__dict__.pop("frame_in_progress", None)
        try:
            return real(self)
        finally:
            self.frame_in_progress = self.__dict__.pop("current_frame", None)

    monkeypatch.setattr(autobahn_protocol.WebSocketProtocol, "processData", process_data)


@pytest.mark.parametrize(
    ("remove", "missing", "expected"),
    [
        (_remove_url_to_origin, "_url_to_origin", FastPaths(handshake=False)),
        (_remove_tcp_server, "twisted.internet.tcp.Server", FastPaths(write=False)),
        (_rename_current_frame, "current_frame", FastPaths(read=False)),
    ],
    ids=["handshake", "write", "read"],
)
def test_what_is_missing_turns_its_fast_path_off(
    make_server: Callable[..., RunningServer],
    monkeypatch: pytest.MonkeyPatch,
    events: list[dict[str, Any]],
    remove: Any,
    missing: str,
    expected: FastPaths,
) -> None:
    """One warning names what is missing; the traffic is the same with the
    fast paths that remain."""
    before = exchange(make_server, ALL_FAST_PATHS)
    remove(monkeypatch)

    def check() -> tuple[FastPaths, list[dict[str, Any]]]:
        start = len(events)
        return compat.check(), events[start:]

    paths, logged = on_reactor(check)
    assert paths == expected
    warnings = [e for e in logged if e.get("log_level") >= LogLevel.warn]
    assert len(warnings) == 1, warnings
    text = formatEvent(warnings[0])
    assert missing in text
    assert f"Fast path(s) off: {expected.off()[0]};" in text
    assert "Autobahn's public path is used instead" in text
    assert exchange(make_server, paths) == before


def test_autobahn_is_changed_by_make_service_not_by_an_import() -> None:
    """Importing the package leaves Autobahn as it is; makeService replaces
    its debug formatters (compat.skip_debug_formatting)."""
    script = """
import pprint
import autobahn.websocket.protocol as autobahn_protocol
import signaling.ops.tap, signaling.web.site, signaling.wire.protocol
assert autobahn_protocol.pformat is pprint.pformat, "changed by an import"
from signaling.ops.tap import Options, makeService
config = Options()
config.parseOptions(["--interface", "127.0.0.1", "--port", "0"])
makeService(config)
value = [("setting", 1)]
assert autobahn_protocol.pformat(value) is value, "not changed by makeService"
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        env=source_env(),
        check=False,
    )
    assert done.returncode == 0, done.stderr
