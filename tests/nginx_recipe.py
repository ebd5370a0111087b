"""The README's "Behind nginx" recipe, set up as written: Debian's nginx with
TLS in front of the real ``twistd signaling`` on a unix socket.

The nginx site and the commands that start the server are read from
README.rst (the literal blocks after the ``.. nginx-site`` and
``.. nginx-server`` comments), so the recipe and its test cannot drift
apart; only paths, ports and the server's user are replaced.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import shlex
import shutil
import socket
import ssl
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from bench.twistd import ROOT, ServerProcess, twistd

from .certs import CertificateAuthority, client_context
from .twistd_process import free_port, wait_unix_listening

README = ROOT / "README.rst"
#: Debian's nginx.conf runs the workers as this user; the recipe's socket
#: directory and socket belong to its group.
NGINX_USER = "www-data"
START_TIMEOUT = 20.0


def missing(reason: str) -> NoReturn:
    """Skip, or fail under CI=true (CI installs nginx: .ci/run)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the nginx recipe test")
    pytest.skip(reason)


def readme_block(marker: str) -> str:
    """The literal block that follows the ``.. MARKER:`` comment in README.rst."""
    lines = README.read_text().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f".. {marker}:")]
    assert len(starts) == 1, f"README.rst must have one '.. {marker}:' comment"
    i = starts[0] + 1
    while lines[i].strip() != "::":
        assert not lines[i].strip(), f"no literal block right after '.. {marker}:'"
        i += 1
    block: list[str] = []
    for line in lines[i + 1 :]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


def substitute(text: str, replacements: dict[str, str]) -> str:
    """Replace each key, which must occur in ``text`` (else the README
    changed and the test must be told how)."""
    for old, new in replacements.items():
        assert old in text, f"the README's recipe no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@dataclass
class Deployment:
    """nginx on ``https://127.0.0.1:{port}`` (a certificate for 127.0.0.1 and
    localhost, issued by ``ca_file``), the server behind it."""

    port: int
    metrics_port: int
    ca_file: Path
    socket_path: Path
    server: ServerProcess
    nginx_log: Path

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client_context(self) -> ssl.SSLContext:
        """TLS as browsers offer it: ALPN h2 and http/1.1. Capped at TLS 1.2
        (websockets' sync client stalls now and then on 1.3: tests/test_wss.py)."""
        context = client_context(self.ca_file, maximum=ssl.TLSVersion.TLSv1_2)
        context.set_alpn_protocols(["h2", "http/1.1"])
        return context


def _wait_listening(port: int, nginx: subprocess.Popen[bytes], error_log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        if nginx.poll() is not None or time.monotonic() > deadline:
            log = error_log.read_text() if error_log.exists() else ""
            raise AssertionError(f"nginx did not start (exit {nginx.poll()}):\n{log}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(START_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(START_TIMEOUT)


@contextlib.contextmanager
def deployment(*extra_server_args: str) -> Iterator[Deployment]:
    """Set the recipe up in a fresh directory; tear it down afterwards.

    ``extra_server_args`` are added after the README's server options (say,
    ``--log-level debug`` to see each client's address).
    """
    nginx = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))
    if nginx is None:
        missing("no nginx: apt-get install nginx-light (Debian's nginx)")
    if os.geteuid() != 0:
        missing("the nginx recipe test runs nginx's master as root, as Debian does")
    # Not under pytest's tmp_path (mode 0700): nginx's workers must reach the socket.
    top = Path(tempfile.mkdtemp(prefix="signaling-nginx-"))
    top.chmod(0o755)
    try:
        yield from _deploy(top, nginx, extra_server_args)
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _deploy(top: Path, nginx: str, extra_server_args: tuple[str, ...]) -> Iterator[Deployment]:
    port, metrics_port = free_port(), free_port()
    run_dir = top / "run" / "signaling"
    socket_path = run_dir / "signaling.sock"
    ca = CertificateAuthority()
    cert, key = ca.write_server(top / "live")
    ca_file = ca.write_root(top / "ca.pem")

    # The server, by the README's commands.
    commands = substitute(
        readme_block("nginx-server"),
        {
            "/run/signaling": str(run_dir),
            "tcp:9100:": f"tcp:{metrics_port}:",
            "-o signaling ": f"-o {getpass.getuser()} ",
        },
    )
    [install, start] = [shlex.split(line) for line in commands.replace("\\\n", " ").splitlines()]
    assert install[:2] == ["install", "-d"], install
    subprocess.run(install, check=True)
    assert start[:3] == ["twistd", "-n", "signaling"], start
    workdir = top / "server"
    workdir.mkdir()

    # nginx, with Debian's main context (nginx.conf) around the README's site.
    prefix = top / "nginx"
    prefix.mkdir()
    site = substitute(
        readme_block("nginx-site"),
        {
            "/run/signaling/signaling.sock": str(socket_path),
            "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
            "/etc/letsencrypt/live/example.org/fullchain.pem": str(cert),
            "/etc/letsencrypt/live/example.org/privkey.pem": str(key),
        },
    )
    (prefix / "site.conf").write_text(site)
    error_log = prefix / "error.log"
    temp_paths = "\n".join(
        f"    {kind}_temp_path {prefix / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (prefix / "nginx.conf").write_text(
        f"user {NGINX_USER};\n"
        "worker_processes 1;\n"
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {error_log} info;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        f"    access_log {prefix / 'access.log'};\n"
        f"{temp_paths}\n"
        f"    include {prefix / 'site.conf'};\n"
        "}\n"
    )

    with twistd(workdir, *start[3:], *extra_server_args) as server:
        server.wait_for("starting on .*" + re.escape(str(socket_path)))
        wait_unix_listening(socket_path)
        process = subprocess.Popen(
            [
                *(nginx, "-p", f"{prefix}/", "-e", str(error_log)),
                *("-c", str(prefix / "nginx.conf"), "-g", "daemon off;"),
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            _wait_listening(port, process, error_log)
            yield Deployment(port, metrics_port, ca_file, socket_path, server, error_log)
        finally:
            _stop(process)
