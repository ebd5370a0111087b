"""The SSH admin console: real logins over a real port, and its start-up options."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.conch.ssh import keys
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python import usage

from bench.twistd import ServerProcess
from signaling import admin
from signaling.admin import manhole
from signaling.ops.tap import Options, makeService

from .conftest import TIMEOUT, RunningServer, on_reactor, wait_for
from .redis_rooms import require_redis_rooms
from .redis_servers import SHARED_URL, shared_prefix
from .sshconsole import Console, LoginRefused, OpenSSH, connect_without_reading, login, openssh_key
from .test_admin import close_frame
from .test_cluster import open_ws_client, registered

PROMPT = ">>> "


def new_key() -> keys.Key:
    return keys.Key(Ed25519PrivateKey.generate())


def fingerprint(key: keys.Key) -> str:
    """As ``ssh-keygen -l`` shows it."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


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
def start_manhole(keys_file: Path, host_key: keys.Key) -> Iterator[Callable[..., int]]:
    """Serve the console for a running server on 127.0.0.1, port 0; return the port."""
    ports = []

    def start(server: RunningServer, **options: Any) -> int:
        factory = manhole.build_manhole_factory(
            admin.Admin(server.factory).namespace(),
            manhole.AuthorizedKeysFile(str(keys_file)),
            host_key,
            **options,
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


# -- logging in and using the console -----------------------------------------


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


def test_damaged_key_lines_are_skipped_and_logged_once_per_change(
    server: RunningServer, start_manhole, open_console, host_key, operator_key, keys_file
) -> None:
    with keys_file.open("ab") as out:
        out.write(b"ssh-ed25519 AAAA\n")  # truncated
    port = start_manhole(server)
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        for _ in range(3):
            open_console(port, host_key, key=operator_key).close()
        with keys_file.open("ab") as out:
            out.write(b"# changed\n")
        open_console(port, host_key, key=operator_key)
    finally:
        globalLogPublisher.removeObserver(events.append)
    damaged = [e for e in events if e.get("log_format", "").startswith("Unable to parse line")]
    assert [e["line"] for e in damaged] == [b"ssh-ed25519 AAAA"] * 2


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
    logins = [
        e for e in events if e.get("log_format", "").startswith("manhole login as {user} with")
    ]
    assert [(e["user"], e["fingerprint"]) for e in logins] == [("alice", fingerprint(operator_key))]


@contextlib.contextmanager
def served_console(
    tmp_path: Path, open_console, keys_file: Path, operator_key: keys.Key, *options: str
) -> Iterator[Console]:
    """A server built by makeService from the options (as twistd would), with
    its console on a UNIX socket, and a console logged in to it."""
    socket_path = str(tmp_path / "manhole.sock")
    config = parse(
        *("--port", "0", "--interface", "127.0.0.1", "--manhole", f"unix:{socket_path}"),
        *("--manhole-keys", str(keys_file), "--manhole-host-key", str(tmp_path / "hk")),
        *options,
    )
    service = makeService(config)
    on_reactor(service.startService)
    try:
        assert config.manhole is not None
        yield open_console(socket_path, config.manhole.host_key, key=operator_key)
    finally:
        on_reactor(service.stopService)


def test_make_service_serves_the_console(
    tmp_path: Path, open_console, keys_file: Path, operator_key: keys.Key
) -> None:
    """The options, makeService and the namespace, end to end over a UNIX socket."""
    with served_console(tmp_path, open_console, keys_file, operator_key) as console:
        console.run("print('up', stats().connections, rooms(), type(factory).__name__)")
        console.wait_for_text("up 0 {} SignalingFactory")


def test_console_exit_ends_the_session(console: Console) -> None:
    console.run("exit")
    console.wait_for_text("Use exit() or Ctrl-D to log out")
    console.run("exit()")
    assert wait_for(console.is_closed)


def test_sys_exit_ends_the_session_not_the_server(
    server: RunningServer, start_manhole, open_console, host_key, operator_key
) -> None:
    port = start_manhole(server)
    console = open_console(port, host_key, key=operator_key)
    console.run("import sys; sys.exit(3)")
    assert wait_for(console.is_closed)
    again = open_console(port, host_key, key=operator_key)
    again.run("print('still', 6 * 7)")
    again.wait_for_text("still 42")


def test_sha1_rsa_signatures_are_refused(
    server: RunningServer, start_manhole, host_key, keys_file: Path
) -> None:
    """twisted.conch's client signs with an RSA key as ``ssh-rsa`` (SHA-1)."""
    rsa_key = keys.Key(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with keys_file.open("ab") as out:
        out.write(rsa_key.public().toString("OPENSSH") + b"\n")
    port = start_manhole(server)
    with pytest.raises(LoginRefused) as refused:
        login(port, host_key, key=rsa_key)
    assert refused.value.refused == [b"publickey"]


def test_a_client_that_does_not_read_is_no_longer_read(
    server: RunningServer, keys_file: Path, host_key: keys.Key
) -> None:
    """Requests whose answers pile up unread stop being read, rather than
    the answers being buffered without bound."""
    factory = manhole.build_manhole_factory(
        {}, manhole.AuthorizedKeysFile(str(keys_file)), host_key
    )
    served: list[Any] = []
    build = factory.buildProtocol
    factory.buildProtocol = lambda addr: served.append(build(addr)) or served[-1]  # type: ignore[method-assign]
    port = on_reactor(reactor.listenTCP, 0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        client = connect_without_reading(port.getHost().port, host_key)
        try:
            connection = served[0].transport
            # Small kernel buffers (Linux grows them up to 4 MB) make the
            # answers of a few thousand requests enough to back up.
            handle = on_reactor(connection.getHandle)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            on_reactor(client.auth.send, 5_000)
            assert wait_for(
                lambda: on_reactor(lambda: connection not in reactor.getReaders()),
                2 * TIMEOUT,  # type: ignore[attr-defined]
            )
        finally:
            on_reactor(client.transport.abortConnection)
    finally:
        on_reactor(port.stopListening)


# -- the OpenSSH client -------------------------------------------------------


@pytest.fixture(scope="module")
def openssh_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A key pair of each type, made by ssh-keygen."""
    directory = tmp_path_factory.mktemp("openssh")
    return {kind: openssh_key(directory, kind) for kind in ("rsa", "ed25519", "ecdsa")}


@pytest.fixture
def authorize(keys_file: Path) -> Callable[[Path], None]:
    """Add the public half of an OpenSSH key pair to the keys file."""

    def add(identity: Path) -> None:
        with keys_file.open("ab") as out:
            out.write(identity.with_suffix(".pub").read_bytes())

    return add


@pytest.fixture
def run_ssh(tmp_path: Path, host_key: keys.Key) -> Iterator[Callable[..., OpenSSH]]:
    """Start ``ssh`` to the console on a port, trusting only its host key."""
    started: list[OpenSSH] = []

    def run(port: int, identity: Path, *options: str) -> OpenSSH:
        known_hosts = tmp_path / "known_hosts"
        known_hosts.write_bytes(
            f"[127.0.0.1]:{port} ".encode() + host_key.public().toString("OPENSSH") + b"\n"
        )
        ssh = OpenSSH(port, identity, known_hosts, *options)
        started.append(ssh)
        return ssh

    yield run
    for ssh in started:
        ssh.close()


def use_console(ssh: OpenSSH) -> None:
    """At the prompt, compute 6*7 and log out with exit(); ssh must exit with 0."""
    ssh.wait_for_text(PROMPT)
    ssh.type("print(6*7)")
    ssh.wait_for_text("\n42")
    ssh.type("exit()")
    assert ssh.wait_exit() == 0, ssh.errors()


@pytest.mark.parametrize("kind", ["rsa", "ed25519", "ecdsa"])
def test_openssh_logs_in_with_each_key_type(
    server: RunningServer, start_manhole, openssh_keys, authorize, run_ssh, kind: str
) -> None:
    authorize(openssh_keys[kind])
    use_console(run_ssh(start_manhole(server), openssh_keys[kind]))


def test_openssh_key_not_in_the_keys_file_is_refused(
    server: RunningServer, start_manhole, openssh_keys, authorize, run_ssh
) -> None:
    authorize(openssh_keys["ed25519"])
    ssh = run_ssh(start_manhole(server), openssh_keys["rsa"])
    assert ssh.wait_exit() == 255
    assert "Permission denied (publickey)" in ssh.errors()


def test_openssh_rsa_needs_sha2_signatures(
    server: RunningServer, start_manhole, openssh_keys, authorize, run_ssh
) -> None:
    """The server advertises the algorithms it verifies (RFC 8308 server-sig-algs),
    RSA with SHA-2 only; ssh restricted to ssh-rsa (SHA-1) cannot log in."""
    authorize(openssh_keys["rsa"])
    port = start_manhole(server)
    sha1 = run_ssh(port, openssh_keys["rsa"], "-v", "-o", "PubkeyAcceptedAlgorithms=ssh-rsa")
    assert sha1.wait_exit() == 255
    assert "Permission denied (publickey)" in sha1.errors()
    advertised = re.search(r"server-sig-algs=<([^>]*)>", sha1.errors())
    assert advertised, sha1.errors()
    assert advertised.group(1).split(",") == [
        "ssh-ed25519",
        *("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521"),
        *("rsa-sha2-512", "rsa-sha2-256"),
    ]
    sha512 = run_ssh(port, openssh_keys["rsa"], "-o", "PubkeyAcceptedAlgorithms=rsa-sha2-512")
    use_console(sha512)


# -- authentication timeout ---------------------------------------------------


def test_connection_that_does_not_log_in_is_closed(
    server: RunningServer, start_manhole, host_key, operator_key
) -> None:
    clock = Clock()
    port = start_manhole(server, auth_timeout=30, clock=clock)
    logged_in = login(port, host_key, key=operator_key)
    logged_in.wait_for_text(PROMPT)
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as idle:
        idle.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        assert idle.recv(4096).startswith(b"SSH-2.0-")
        on_reactor(clock.advance, 29)
        assert not logged_in.is_closed()
        on_reactor(clock.advance, 1)
        assert b"authentication timeout" in read_to_end(idle)
    logged_in.run("print('still', 6 * 7)")
    logged_in.wait_for_text("still 42")


def read_to_end(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = bytearray()
    while chunk := connection.recv(65536):
        received += chunk
    return bytes(received)


# -- the server's log ---------------------------------------------------------


@pytest.fixture
def twistd_manhole(
    run_twistd, keys_file: Path, tmp_path: Path, host_key: keys.Key
) -> Callable[..., tuple[ServerProcess, int]]:
    """``twistd signaling`` with the console on a free port; returns it and the port."""

    def start(*args: str) -> tuple[ServerProcess, int]:
        process = run_twistd(
            *("--port", "0", "--interface", "127.0.0.1"),
            *("--manhole", "tcp:0:interface=127.0.0.1", "--manhole-keys", str(keys_file)),
            *("--manhole-host-key", str(tmp_path / "host_key"), *args),
        )
        # The last start-up line: once it is there, only the console's own follow.
        console = process.wait_for(r"admin console at ssh://127\.0\.0\.1:(\d+)").group(1)
        return process, int(console)

    return start


def test_info_log_has_logins_and_logouts_only(
    twistd_manhole, openssh_keys, authorize, run_ssh
) -> None:
    """At the default level a session and a refused login add two lines, both
    the console's own: no twisted.conch details, no error for a normal logout."""
    authorize(openssh_keys["ecdsa"])
    process, port = twistd_manhole()
    start = process.mark()
    refused = run_ssh(port, openssh_keys["rsa"])
    assert refused.wait_exit() == 255
    use_console(run_ssh(port, openssh_keys["ecdsa"]))
    process.wait_for(r"manhole logout of admin after \d+ s", after=start)
    lines = [line.split(" ", 1)[1] for line in process.output.splitlines()[start:]]
    public = keys.Key.fromFile(str(openssh_keys["ecdsa"].with_suffix(".pub")))
    assert len(lines) == 2, lines
    assert (
        lines[0]
        == f"[signaling.admin.manhole#info] manhole login as admin with key {fingerprint(public)}"
    )
    assert re.fullmatch(
        r"\[signaling.admin.manhole#info\] manhole logout of admin after \d+ s", lines[1]
    )


def test_debug_log_has_the_console_s_own_events(
    twistd_manhole, openssh_keys, authorize, run_ssh
) -> None:
    authorize(openssh_keys["ed25519"])
    process, port = twistd_manhole("--log-level", "debug")
    start = process.mark()
    assert run_ssh(port, openssh_keys["rsa"]).wait_exit() == 255
    use_console(run_ssh(port, openssh_keys["ed25519"]))
    process.wait_for(r"manhole logout of admin", after=start)
    log = "\n".join(process.output.splitlines()[start:])
    assert (
        "[signaling.admin.manhole#debug] manhole login as admin refused: Key not authorized" in log
    )
    assert re.search(
        r"\[signaling.admin.manhole#debug\] manhole client .* disconnected: code 11", log
    )
    assert "#error]" not in log and "Got remote error" not in log
    assert "NEW KEYS" not in log and "trying auth" not in log, log


def test_auth_timeout_option_closes_idle_connections(twistd_manhole) -> None:
    _, port = twistd_manhole("--manhole-auth-timeout", "1")
    started = time.monotonic()  # before the server can have accepted
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as idle:
        idle.sendall(b"SSH-2.0-OpenSSH_9.2\r\n")
        received = read_to_end(idle)
        assert time.monotonic() - started >= 1
    assert b"authentication timeout" in received


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
    assert "--manhole-auth-timeout=" in usage_text
    assert "[default: 30.0]" in usage_text.split("--manhole-auth-timeout=")[1]


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
        (
            [
                *("--manhole", "tcp:2222:interface=127.0.0.1", "--manhole-keys", "KEYS"),
                *("--manhole-auth-timeout", "-1"),
            ],
            "-1 is not a number of seconds >= 0",
        ),
    ],
)
def test_manhole_option_mistakes_are_usage_errors(
    tmp_path: Path, keys_file: Path, args: list[str], complaint: str
) -> None:
    empty = tmp_path / "empty_keys"
    empty.write_text(
        "# no keys\nnot a key\nssh-ed25519 AAAA\nssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ\n"
    )
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


def test_the_console_lists_and_closes_rooms_across_processes(
    tmp_path: Path, open_console, keys_file: Path, operator_key: keys.Key, run_twistd
) -> None:
    """With --redis, the console of one process (built by makeService, as
    twistd would) lists a room whose members are all on another process, and
    closes it there."""
    require_redis_rooms()
    with shared_prefix() as prefix, contextlib.ExitStack() as stack:
        other = run_twistd(
            *("--port", "0", "--interface", "127.0.0.1"),
            *("--redis", SHARED_URL, "--redis-prefix", prefix),
        )
        assert wait_for(lambda: registered(other.port), 10), other.output
        a, b = open_ws_client(stack, other), open_ws_client(stack, other)
        a.join("standup")
        b.join("standup")
        a.expect("new-client")
        redis = ("--redis", SHARED_URL, "--redis-prefix", prefix)
        with served_console(tmp_path, open_console, keys_file, operator_key, *redis) as console:
            console.run("cluster_rooms()")
            console.wait_for_text(f"'standup': ['{a.id}', '{b.id}']")
            console.run("close_room('standup', 'maintenance')")
            assert a.expect_closed() == admin.ROOM_CLOSED
            assert b.expect_closed() == admin.ROOM_CLOSED
