"""SSH clients that log in to the admin console as an operator would.

:func:`login` and :class:`Console` are a twisted.conch client running in the
reactor thread; they are called from the test thread and block, with bounded
waits, until the server answers.  :class:`OpenSSH` runs the OpenSSH client
(Debian's ``openssh-client``), the one operators use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.conch.ssh.common import NS, getNS
from twisted.internet import defer, reactor
from twisted.internet.protocol import ClientFactory

from .conftest import TIMEOUT, on_reactor, wait_for


class LoginRefused(Exception):
    """The server ended the connection before a shell opened.

    ``refused`` lists the methods it answered with a failure; ``offered`` is
    the methods it said it would accept.
    """

    def __init__(self, refused: list[bytes], offered: bytes) -> None:
        super().__init__(f"refused {refused!r}; server offers {offered!r}")
        self.refused = refused
        self.offered = offered


class _Shell(channel.SSHChannel):
    name = b"session"

    def __init__(self, opened: defer.Deferred[_Shell], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.opened = opened
        self.output = bytearray()
        self.is_closed = False

    def channelOpen(self, specificData: bytes) -> None:
        pty = session.packRequest_pty_req(b"vt100", (24, 200, 0, 0), b"")
        d = self.conn.sendRequest(self, b"pty-req", pty, wantReply=True)
        d.addCallback(lambda _: self.conn.sendRequest(self, b"shell", b"", wantReply=True))
        d.addCallbacks(lambda _: self.opened.callback(self), self.opened.errback)

    def dataReceived(self, data: bytes) -> None:
        self.output += data

    def closed(self) -> None:
        self.is_closed = True


class _Connection(connection.SSHConnection):
    def __init__(self, opened: defer.Deferred[_Shell]) -> None:
        super().__init__()
        self.opened = opened

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self.openChannel(_Shell(self.opened, conn=self))


class _UserAuth(userauth.SSHUserAuthClient):
    """Offers ``key`` if given; sends ``password`` even when the server does
    not list it, since the point is to see the server refuse it."""

    def __init__(
        self, user: bytes, instance: Any, key: keys.Key | None, password: bytes | None
    ) -> None:
        super().__init__(user, instance)
        self.key = key
        self.password = password
        self.refused: list[bytes] = []
        self.offered = b""

    def getPublicKey(self) -> keys.Key | None:
        key, self.key = self.key, None  # offer it once
        self.private_key = key
        return key.public() if key is not None else None

    def getPrivateKey(self) -> defer.Deferred[keys.Key]:
        return defer.succeed(self.private_key)

    def ssh_USERAUTH_FAILURE(self, packet: bytes) -> Any:
        self.offered = getNS(packet)[0]
        if self.lastAuth != b"none":
            self.refused.append(self.lastAuth)
        if self.password is not None:
            password, self.password = self.password, None
            self.askForAuth(b"password", b"\x00" + NS(password))
            return None
        return super().ssh_USERAUTH_FAILURE(packet)


class _Transport(transport.SSHClientTransport):
    def __init__(self, host_key: keys.Key, auth: _UserAuth, opened: defer.Deferred[_Shell]):
        super().__init__()
        self.host_key = host_key
        self.auth = auth
        self.opened = opened

    def verifyHostKey(self, hostKey: bytes, fingerprint: bytes) -> defer.Deferred[bool]:
        if hostKey != self.host_key.public().blob():
            return defer.fail(AssertionError("unexpected host key " + fingerprint.decode()))
        return defer.succeed(True)

    def connectionSecure(self) -> None:
        self.requestService(self.auth)

    def connectionLost(self, reason: Any) -> None:
        super().connectionLost(reason)
        if not self.opened.called:
            self.opened.errback(LoginRefused(self.auth.refused, self.auth.offered))


class _Flood(userauth.SSHUserAuthClient):
    """Once the auth service starts, stops reading; :meth:`send` then sends
    ``none`` auth requests (the method that does not count as a failed attempt)."""

    refused: list[bytes] = []
    offered = b""
    started = False

    def __init__(self) -> None:
        super().__init__(b"flood", _Connection(defer.Deferred()))

    def serviceStarted(self) -> None:
        self.transport.transport.pauseProducing()
        self.started = True

    def send(self, count: int) -> None:
        for _ in range(count):
            self.askForAuth(b"none", b"")


def connect_without_reading(port: int, host_key: keys.Key) -> Any:
    """Connect to 127.0.0.1 ``port`` with a small receive buffer and get as far
    as the auth service; from then on read nothing.  Returns the client's SSH
    transport: ``auth.send(count)`` sends requests, abort ``transport`` when done."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    opened: defer.Deferred[_Shell] = defer.Deferred()
    opened.addErrback(lambda _: None)  # it never opens a shell
    client = _Transport(host_key, _Flood(), opened)  # type: ignore[arg-type]
    factory = ClientFactory.forProtocol(lambda: client)  # type: ignore[arg-type]
    try:
        on_reactor(reactor.adoptStreamConnection, sock.fileno(), socket.AF_INET, factory)  # type: ignore[attr-defined]
    finally:
        sock.close()  # the reactor has its own copy
    assert wait_for(lambda: client.auth.started), "the auth service did not start"
    return client


class Console:
    """An open admin console session; read and write it from the test thread."""

    def __init__(self, shell: _Shell) -> None:
        self._shell = shell
        self._seen = 0

    def output(self) -> str:
        return on_reactor(lambda: bytes(self._shell.output)).decode("utf-8", "replace")

    def wait_for_text(self, text: str, timeout: float = TIMEOUT) -> str:
        """Wait until ``text`` appears in output not consumed yet; consume up to it."""
        found = wait_for(lambda: text in self.output()[self._seen :], timeout)
        output = self.output()
        assert found, f"{text!r} not in console output: {output[self._seen :]!r}"
        end = output.index(text, self._seen) + len(text)
        seen, self._seen = output[self._seen : end], end
        return seen

    def run(self, line: str) -> None:
        """Type one line of Python at the prompt."""
        on_reactor(self._shell.write, line.encode() + b"\r")

    def resize(self, rows: int, columns: int) -> bool:
        """Send window-change; True if the server accepted it."""
        request = session.packRequest_window_change((rows, columns, 0, 0))

        def send() -> defer.Deferred[bool]:
            d = self._shell.conn.sendRequest(self._shell, b"window-change", request, True)
            return d.addCallbacks(lambda _: True, lambda _: False)

        return on_reactor(send)

    def send_eof(self) -> None:
        on_reactor(self._shell.conn.sendEOF, self._shell)

    def is_closed(self) -> bool:
        return on_reactor(lambda: self._shell.is_closed)

    def close(self) -> None:
        on_reactor(self._shell.conn.transport.loseConnection)


def login(
    address: int | str,
    host_key: keys.Key,
    key: keys.Key | None = None,
    password: bytes | None = None,
    user: bytes = b"operator",
) -> Console:
    """Log in to the console on 127.0.0.1 port ``address`` (or the UNIX socket at
    that path); raise :class:`LoginRefused`."""

    def connect() -> defer.Deferred[_Shell]:
        opened: defer.Deferred[_Shell] = defer.Deferred()
        auth = _UserAuth(user, _Connection(opened), key, password)
        factory = ClientFactory()
        factory.protocol = lambda: _Transport(host_key, auth, opened)  # type: ignore[assignment]
        if isinstance(address, str):
            reactor.connectUNIX(address, factory, timeout=TIMEOUT)  # type: ignore[attr-defined]
        else:
            reactor.connectTCP("127.0.0.1", address, factory, timeout=TIMEOUT)  # type: ignore[attr-defined]
        return opened.addTimeout(TIMEOUT, reactor)  # type: ignore[arg-type]

    return Console(on_reactor(connect))


def openssh_tool(name: str) -> str:
    """The path of ``ssh`` or ``ssh-keygen``; missing, skip the test (fail it under CI)."""
    path = shutil.which(name)
    if path is None:
        message = f"no {name} on PATH (apt-get install openssh-client)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def openssh_key(directory: Path, kind: str) -> Path:
    """A new key pair made by ``ssh-keygen -t kind``; returns the private key's path."""
    path = directory / f"id_{kind}"
    subprocess.run(
        [openssh_tool("ssh-keygen"), "-q", "-N", "", "-t", kind, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return path


class OpenSSH:
    """``ssh -tt`` logging in to the console on 127.0.0.1 with one key.

    Input is a pipe, so ``-tt`` forces a pty; ``known_hosts`` must list the
    console's host key (checked strictly).  No agent, no user configuration.
    """

    def __init__(
        self, port: int, identity: Path, known_hosts: Path, *options: str, user: str = "admin"
    ) -> None:
        argv = [
            openssh_tool("ssh"),
            *("-tt", "-F", "/dev/null", "-p", str(port), "-i", str(identity)),
            *("-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none"),
            *("-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}"),
            *("-o", f"ConnectTimeout={TIMEOUT:.0f}"),
            *options,
            f"{user}@127.0.0.1",
        ]
        self.process = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._output = bytearray()
        self._errors = bytearray()
        self._lock = threading.Lock()
        self._seen = 0
        self._readers = [
            threading.Thread(target=self._read, args=(stream, buffer), daemon=True)
            for stream, buffer in (
                (self.process.stdout, self._output),
                (self.process.stderr, self._errors),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream: Any, buffer: bytearray) -> None:
        while chunk := stream.read1(65536):
            with self._lock:
                buffer += chunk

    def output(self) -> str:
        with self._lock:
            return self._output.decode("utf-8", "replace")

    def errors(self) -> str:
        with self._lock:
            return self._errors.decode("utf-8", "replace")

    def wait_for_text(self, text: str, timeout: float = TIMEOUT) -> None:
        """Wait until ``text`` appears in output not consumed yet; consume up to it."""
        found = wait_for(lambda: text in self.output()[self._seen :], timeout)
        output = self.output()
        assert found, f"{text!r} not in ssh output: {output[self._seen :]!r}; {self.errors()!r}"
        self._seen = output.index(text, self._seen) + len(text)

    def type(self, line: str) -> None:
        """Type one line at the console."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\r")
        self.process.stdin.flush()

    def wait_exit(self, timeout: float = TIMEOUT) -> int:
        """Wait for ssh to end; its exit status (255: ssh failed, e.g. refused)."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait_exit()
        assert self.process.stdin is not None
        self.process.stdin.close()
