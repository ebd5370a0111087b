"""The SSH admin console: real logins over a real port, and its start-up options."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.ssh import keys
from twisted.internet import reactor
from twisted.logger import globalLogPublisher
from twisted.python import usage

from signaling import admin, manhole
from signaling.tap import Options, makeService

from .conftest import RunningServer, on_reactor, wait_for
from .sshconsole import Console, LoginRefused, login
from .test_admin import close_frame

PROMPT = ">>> "


def new_key() -> keys.Key:
    return keys.Key(Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def operator_key() -> keys.Key:
    return new_key()


@pytest.fixture
def keys_file(tmp_path: Path, operator_key: keys.Key) -> Path:
    path = tmp_path / "authorized_keys"
    public = operator_key.public().toString("OPENSSH", comment="operator@example")
    path.write_bytes(b"# operators\n" + public + b"\n")
    return path


@pytest.fixture
def host_key(tmp_path: Path) -> keys.Key:
    return manhole.load_or_create_host_key(str(tmp_path / "host_key"))


@pytest.fixture
def start_manhole(keys_file: Path, host_key: keys.Key) -> Iterator[Callable[[RunningServer], int]]:
    """Serve the console for a running server on 127.0.0.1, port 0; return the port."""
    ports = []

    def start(server: RunningServer) -> int:
        factory = manhole.build_manhole_factory(
            admin.Admin(server.factory).namespace(),
            manhole.AuthorizedKeysFile(str(keys_file)),
            host_key,
        )
        port = on_reactor(reactor.listenTCP, 0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
        ports.append(port)
        return port.getHost().port

    yield start
    for port in ports:
        on_reactor(port.stopListening)


@pytest.fixture
def open_console() -> Iterator[Callable[..., Console]]:
    consoles: list[Console] = []

    def open_(*args: Any, **kwargs: Any) -> Console:
        console = login(*args, **kwargs)
        consoles.append(console)
        console.wait_for_text(PROMPT)
        return console

    yield open_
    for console in consoles:
        console.close()


@pytest.fixture
def console(server: RunningServer, start_manhole, open_console, host_key, operator_key) -> Console:
    """An operator logged in to the console of ``server``."""
    return open_console(start_manhole(server), host_key, key=operator_key)


# -- logging in and using the console ----------------------------------------


def test_kick_from_console_closes_client_and_room_sees_leave(
    server: RunningServer, console: Console
) -> None:
    a, b = server.client(), server.client()
    a.join("standup")
    b.join("standup")
    a.expect("new-client")

    console.run(f"kick({b.id!r})")
    assert close_frame(b) == (admin.KICKED, "kicked by the server operator")
    assert a.expect("leave-client") == {"client_id": b.id}

    console.run("print('members:', rooms())")
    console.wait_for_text(f"members: {{'standup': [{a.id!r}]}}")
    console.run("say('standup', 'restart at noon')")
    assert a.expect("server-message") == {"text": "restart at noon"}
    console.run(f"print('open:', stats().connections, client({a.id!r}).room_id)")
    console.wait_for_text("open: 1 standup")


def test_console_reports_errors_and_stays_open(console: Console) -> None:
    console.run("kick('nobody')")
    console.wait_for_text("UnknownClient: no open connection with client id 'nobody'")
    console.run("print('still', 6 * 7)")
    console.wait_for_text("still 42")


def test_console_accepts_resizes_and_ends_on_eof(console: Console) -> None:
    assert console.resize(50, 160)
    console.run("print('after', 'resize')")
    console.wait_for_text("after resize")
    console.send_eof()
    assert wait_for(console.is_closed)


def test_password_login_is_refused(
    server: RunningServer, start_manhole, host_key, operator_key
) -> None:
    port = start_manhole(server)
    with pytest.raises(LoginRefused) as refused:
        login(port, host_key, password=b"hunter2")
    assert refused.value.refused == [b"password"]
    assert refused.value.offered == b"publickey"


def test_unknown_key_is_refused(server: RunningServer, start_manhole, host_key) -> None:
    port = start_manhole(server)
    with pytest.raises(LoginRefused) as refused:
        login(port, host_key, key=new_key())
    assert refused.value.refused == [b"publickey"]


def test_keys_file_is_read_at_each_login(
    server: RunningServer, start_manhole, open_console, host_key, operator_key, keys_file
) -> None:
    port = start_manhole(server)
    open_console(port, host_key, key=operator_key)
    keys_file.write_text("# nobody any more\n")
    with pytest.raises(LoginRefused):
        login(port, host_key, key=operator_key)


def test_logins_are_logged_with_the_key_fingerprint(
    server: RunningServer, start_manhole, open_console, host_key, operator_key
) -> None:
    port = start_manhole(server)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        open_console(port, host_key, key=operator_key, user=b"alice")
        with pytest.raises(LoginRefused):
            login(port, host_key, key=new_key(), user=b"mallory")
    finally:
        globalLogPublisher.removeObserver(events.append)
    logins = [e for e in events if e.get("log_format", "").startswith("manhole login")]
    fingerprint = operator_key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")
    assert [(e["user"], e["fingerprint"]) for e in logins] == [("alice", "SHA256:" + fingerprint)]


def test_make_service_serves_the_console(
    tmp_path: Path, open_console, keys_file: Path, operator_key: keys.Key
) -> None:
    """The options, makeService and the namespace, end to end over a UNIX socket."""
    socket_path = str(tmp_path / "manhole.sock")
    config = parse(
        *("--port", "0", "--interface", "127.0.0.1", "--manhole", f"unix:{socket_path}"),
        *("--manhole-keys", str(keys_file), "--manhole-host-key", str(tmp_path / "hk")),
    )
    service = makeService(config)
    on_reactor(service.startService)
    try:
        assert config.manhole is not None
        console = open_console(socket_path, config.manhole.host_key, key=operator_key)
        console.run("print('up', stats().connections, rooms(), type(factory).__name__)")
        console.wait_for_text("up 0 {} SignalingFactory")
    finally:
        on_reactor(service.stopService)


# -- options ------------------------------------------------------------------


def parse(*args: str) -> Options:
    config = Options()
    config.parseOptions(list(args))
    return config


def test_help_documents_the_manhole_options() -> None:
    usage_text = str(Options())
    for option in ("--manhole ", "--manhole-keys", "--manhole-host-key", "--manhole-remote"):
        assert option in usage_text
    assert f"[default: {manhole.DEFAULT_HOST_KEY_PATH}]" in usage_text


def test_manhole_is_off_by_default(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse().manhole is None
    assert list(tmp_path.iterdir()) == []  # no host key made


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:2222:interface=127.0.0.1",
        "tcp:2222:127.0.0.2",
        r"tcp6:2222:interface=\:\:1",
        "tcp:2222:interface=localhost",
        "unix:/run/signaling/manhole.sock",
        "ssl:2222:privateKey=k.pem:interface=127.0.0.1",
    ],
)
def test_loopback_endpoints_are_local(endpoint: str) -> None:
    assert manhole.is_local_endpoint(endpoint)


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp:2222",
        "tcp:2222:interface=0.0.0.0",
        r"tcp6:2222:interface=\:\:",
        "tcp:2222:interface=192.0.2.7",
        "tcp:2222:interface=example.org",
        "systemd:domain=INET:index=0",
    ],
)
def test_remote_manhole_needs_the_explicit_flag(
    tmp_path: Path, keys_file: Path, endpoint: str
) -> None:
    assert not manhole.is_local_endpoint(endpoint)
    common = ["--manhole-keys", str(keys_file), "--manhole-host-key", str(tmp_path / "hk")]
    with pytest.raises(usage.UsageError, match="--manhole-remote"):
        parse("--manhole", endpoint, *common)
    if not endpoint.startswith("systemd"):  # systemd: needs inherited sockets to parse
        assert parse("--manhole", endpoint, "--manhole-remote", *common).manhole


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--manhole", "tcp:2222:interface=127.0.0.1"], "--manhole needs --manhole-keys"),
        (["--manhole-keys", "KEYS"], "--manhole-keys needs --manhole"),
        (
            ["--manhole", "bogus:2222", "--manhole-remote", "--manhole-keys", "KEYS"],
            "--manhole bogus:2222: not a usable endpoint",
        ),
        (
            ["--manhole", "tcp:2222:interface=127.0.0.1", "--manhole-keys", "MISSING"],
            "cannot read --manhole-keys",
        ),
        (
            ["--manhole", "tcp:2222:interface=127.0.0.1", "--manhole-keys", "EMPTY"],
            "holds no usable public key",
        ),
    ],
)
def test_manhole_option_mistakes_are_usage_errors(
    tmp_path: Path, keys_file: Path, args: list[str], complaint: str
) -> None:
    empty = tmp_path / "empty_keys"
    empty.write_text("# no keys\nnot a key\n")
    files = {"KEYS": str(keys_file), "MISSING": str(tmp_path / "nope"), "EMPTY": str(empty)}
    args = [files.get(arg, arg) for arg in args]
    with pytest.raises(usage.UsageError, match=complaint):
        parse(*args, "--manhole-host-key", str(tmp_path / "hk"))


def test_host_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    path = str(tmp_path / "host_key")
    first = manhole.load_or_create_host_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not first.isPublic()
    again = manhole.load_or_create_host_key(path)
    assert again == first


def test_bad_host_keys_are_usage_errors(tmp_path: Path) -> None:
    path = tmp_path / "host_key"
    manhole.load_or_create_host_key(str(path))
    path.chmod(0o644)
    with pytest.raises(usage.UsageError, match="accessible by other users"):
        manhole.load_or_create_host_key(str(path))
    path.write_text("not a key")
    path.chmod(0o600)
    with pytest.raises(usage.UsageError, match="not a usable SSH private key"):
        manhole.load_or_create_host_key(str(path))
    path.write_bytes(new_key().public().toString("OPENSSH"))
    with pytest.raises(usage.UsageError, match="holds a public key"):
        manhole.load_or_create_host_key(str(path))
    with pytest.raises(usage.UsageError, match="cannot create the manhole host key"):
        manhole.load_or_create_host_key(str(tmp_path / "no-such-dir" / "host_key"))
