"""The real ``twistd signaling`` command, run as a user would run it."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import venv
from pathlib import Path

import pytest

from bench.twistd import ROOT, run_once, source_env
from signaling.core.limits import Limits, limit_options
from signaling.ops.tap import Options
from signaling.wire.tuning import native_speedups

from .twistd_process import assert_serves, usage_error


def http_get(port: int, path: str) -> tuple[int, bytes]:
    """Status and body of a plain GET (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def assert_serves_demo(port: int) -> None:
    status, page = http_get(port, "/?room=r")
    assert status == 200 and b"static/demo.js" in page
    status, client = http_get(port, "/static/signaling-client.js")
    assert status == 200 and b"export class SignalingClient" in client


def test_help_documents_every_option(tmp_path: Path) -> None:
    result = run_once(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    names = [row[0] for row in Options.optParameters + getattr(Options, "optFlags", [])]
    names += [name[4:].replace("_", "-") for name in dir(Options) if name.startswith("opt_")]
    assert "allowed-origin" in names
    for name in names:
        assert f"--{name}" in result.stdout, name
    assert "/connect" in result.stdout


def help_options(help_text: str) -> dict[str, str | None]:
    """Each option in ``--help`` output, with the default it shows (if any)."""
    options: dict[str, list[str]] = {}
    for line in help_text.splitlines():
        option = re.match(r" {2}(?:-\w, | {4})(--[a-z0-9-]+)=?(.*)", line)
        if option:
            current = options[option.group(1)] = [option.group(2)]
        elif options and line.startswith(" "):
            current.append(line)
    defaults = {}
    for name, text in options.items():
        shown = re.findall(r"\[default: ([^\]]+)\]", " ".join(" ".join(text).split()))
        defaults[name] = shown[-1] if shown else None
    return defaults


def readme_option_rows() -> list[tuple[str, str]]:
    """The option and the default cell of each row of README.rst's option
    tables (the simple tables whose first column is headed ``option``)."""
    lines = (ROOT / "README.rst").read_text().splitlines()
    rows = []
    for at, border in enumerate(lines):
        if not re.fullmatch(r"=+( +=+)+", border) or lines[at + 1].split()[:1] != ["option"]:
            continue
        columns = [match.span() for match in re.finditer("=+", border)]
        end = lines.index(border, at + 3)
        for line in lines[at + 3 : end]:
            first = line[: columns[0][1]]
            if first.strip():  # not the continuation of a row
                name = re.match(r"``(--[a-z0-9-]+)``", first)
                assert name, line
                rows.append((name.group(1), line[slice(*columns[1])].strip()))
    return rows


def test_readme_option_tables_match_help(tmp_path: Path) -> None:
    """Every option of ``--help`` has a row in README.rst's option tables and
    every row an option; a default shown as a literal there is the real one."""
    result = run_once(tmp_path, "--help")
    assert result.returncode == 0, result.stderr
    shown = help_options(result.stdout)
    rows = readme_option_rows()
    # twistd's own --help and --version are described in the text above the table.
    assert {name for name, _ in rows} == shown.keys() - {"--help", "--version"}
    for name, cell in rows:
        literal = re.fullmatch(r"``(.+)``", cell)
        if literal:
            default = shown[name]
            assert default is not None, f"{name}: README says {cell}, --help shows none"
            try:
                assert float(literal.group(1)) == float(default), name
            except ValueError:
                assert literal.group(1) == default, name


def test_serves_with_addr_alias_and_port(run_twistd) -> None:
    server = run_twistd("--addr", "127.0.0.1", "--port", "0")
    assert_serves(server.port)
    assert_serves_demo(server.port)
    output = server.stop()
    assert "Server Shut Down" in output
    assert " join " not in output  # per-connection events are debug-level
    assert '"GET /static/signaling-client.js HTTP/1.1" 200' in output  # the access log
    # The same libraries as this process: the newest Autobahn has its NVX
    # speedups, the oldest that setup.cfg allows does not say it has them.
    if all(native_speedups().values()):
        assert "native speedups active: autobahn_nvx, websockets_masking" in output
    else:
        assert "native speedups missing (autobahn_nvx)" in output


def test_debug_log_level_logs_each_connection(run_twistd) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", "--log-level", "debug")
    assert_serves(server.port)
    output = server.stop()
    for namespace, event in [
        ("signaling.wire.protocol", "connect "),
        ("signaling.core.session", "join "),
        ("signaling.wire.protocol", "disconnect "),
    ]:
        assert f"[{namespace}#debug] {event}" in output, event


def refuse_a_handshake(port: int) -> None:
    """An upgrade to a WebSocket version Autobahn does not speak: it refuses it and logs it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET /connect HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 99\r\n\r\n"
        )
        assert sock.recv(65536).startswith(b"HTTP/1.1 400 WebSocket version 99 not supported")


def test_warn_log_level_hides_info(run_twistd) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", "--log-level", "warn")
    assert_serves(server.port)
    refuse_a_handshake(server.port)
    output = server.stop()
    assert "native speedups active" not in output
    assert "failing WebSocket opening handshake" not in output  # Autobahn's info
    assert "Server Shut Down" in output  # Twisted's own lines are not filtered


def test_info_log_level_shows_refused_handshakes(run_twistd) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0")
    refuse_a_handshake(server.port)
    output = server.stop()
    assert "failing WebSocket opening handshake ('WebSocket version 99 not supported" in output


@pytest.mark.parametrize("level", ["info", "debug"])
def test_plain_get_of_connect_is_routine_not_a_warning(run_twistd, level: str) -> None:
    """Health probes and people trying the URL in a browser: 426, and at
    most a debug line, however many there are."""
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", "--log-level", level)
    mark = server.mark()
    for _ in range(3):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        connection.request("GET", "/connect")
        response = connection.getresponse()
        assert response.status == 426 and response.getheader("upgrade") == "websocket"
        connection.close()
    assert_serves(server.port)
    if level == "debug":
        server.wait_for(
            r"\[signaling\.wire\.protocol#debug\] plain HTTP request for /connect "
            r"from tcp4:127\.0\.0\.1:\d+: 426$"
        )
    output = server.stop()
    lines = output.splitlines()[mark:]
    about_it = [
        line for line in lines if "Upgrade header missing" in line or "request for /connect" in line
    ]
    assert all("#debug]" in line for line in about_it), about_it
    assert len(about_it) == (3 if level == "debug" else 0), about_it
    assert not [line for line in lines if "#warn]" in line or "#error]" in line], output


def test_no_demo_serves_only_the_endpoint(run_twistd) -> None:
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", "--no-demo")
    assert_serves(server.port)
    for path in ("/", "/static/signaling-client.js", "/static/demo.js"):
        assert http_get(server.port, path)[0] == 404


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--port", "70000"], "--port must be between 0 and 65535"),
        (["--port", "http"], "invalid literal"),
        (["--backlog", "0"], "not a positive integer"),
        (["--log-level", "verbose"], "not one of debug, info, warn, error"),
        (["--max-message-size", "0"], "not a positive integer"),
        (["--interface", ""], "--interface must not be empty"),
        (["--manhole", "tcp:0", "--manhole-keys", "keys"], "accept connections from other hosts"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, args: list[str], complaint: str) -> None:
    assert complaint in usage_error(tmp_path, *args)


def test_each_limit_option_sets_its_limit() -> None:
    """Every field of Limits but the origins has an option; each option's
    value reaches its field, parsed to the field's type."""
    options = limit_options()
    assert {option.field for option in options} == {
        field.name for field in dataclasses.fields(Limits)
    } - {"allowed_origins"}
    args = ["--allowed-origin", "https://example.com"]
    for option in options:
        args += [f"--{option.name}", str(option.default + 1)]
    config = Options()
    config.parseOptions(args)
    for option in options:
        value = getattr(config.limits, option.field)
        assert value == option.default + 1 and type(value) is type(option.default), option
    assert config.limits.allowed_origins == ("https://example.com",)


@pytest.mark.slow
def test_plain_install_into_fresh_venv_serves_from_any_directory(
    tmp_path: Path, run_twistd
) -> None:
    """pip install . (not editable) into a new venv; run twistd from elsewhere."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = str(env_dir / "bin" / "python")
    build = tmp_path / "src"
    shutil.copytree(
        ROOT,
        build,
        ignore=shutil.ignore_patterns(
            ".venv", ".git", "*.egg-info", "build", "__pycache__", "dropin.cache"
        ),
    )
    install = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", str(build)],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stdout + install.stderr
    shutil.rmtree(build)  # nothing may come from the source tree any more
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", python=python, env=clean_env)
    assert_serves(server.port)
    assert_serves_demo(server.port)  # the static files are package data
    assert server.process.poll() is None
    assert "Server Shut Down" in server.stop()


def test_listen_backlog_reaches_the_kernel(run_twistd) -> None:
    """A burst of connections queues in the kernel instead of being dropped."""
    server = run_twistd("--interface", "127.0.0.1", "--port", "0", "--backlog", "77")
    listing = subprocess.run(
        ["ss", "-Hltn", f"sport = :{server.port}"],
        capture_output=True,
        check=True,
        text=True,
        timeout=10,
    ).stdout.split()
    assert listing[0] == "LISTEN" and listing[2] == "77", listing  # Send-Q: the backlog


def test_documented_json_logger_writes_one_object_per_line(tmp_path: Path) -> None:
    """``twistd --logger signaling.logs.json_observer signaling``, as README.rst
    gives it: every line on standard output is one JSON object. (Standard
    error is the interpreter's, e.g. a library's import-time warnings.)"""
    twistd = str(Path(sys.executable).parent / "twistd")
    argv = [twistd, "--nodaemon", "--pidfile=", "--logger", "signaling.logs.json_observer"]
    argv += ["signaling", "--interface", "127.0.0.1", "--port", "0"]
    stdout = tmp_path / "stdout"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=tmp_path, env=source_env(), stdout=out, stderr=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 20
        while not (found := re.search(rb"starting on (\d+)", stdout.read_bytes())):
            assert process.poll() is None and time.monotonic() < deadline, stdout.read_text()
            time.sleep(0.05)
        assert_serves(int(found.group(1)))
    finally:
        process.terminate()
        process.wait(20)
    records = [json.loads(line) for line in stdout.read_text().splitlines()]
    assert any(
        r["namespace"] == "signaling.ops.listen" and r["message"].startswith("clients connect to")
        for r in records
    ), records
    assert all({"time", "level", "namespace", "message"} <= set(r) for r in records)
