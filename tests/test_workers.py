"""``--workers``: the real twistd as a supervisor of real worker processes
sharing its listening sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.logger import Logger, formatEventAsClassicLogText, globalLogPublisher
from twisted.python.usage import UsageError
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from bench.twistd import STARTUP_TIMEOUT, ServerProcess, run_once, source_env, twistd
from signaling.ops.tap import Options
from signaling.ops.workers import (
    ENVIRONMENT,
    LOG_FD,
    RESTART_DELAY,
    SharedSockets,
    Supervisor,
    WorkerRole,
    cpu_count,
    parse_workers,
    worker_log_observer,
)

from .certs import CertificateAuthority
from .conftest import TIMEOUT, Client, wait_for
from .redis_servers import SHARED_URL
from .test_systemd import received, socket_activated
from .test_wss import served_name, wss_client
from .twistd_process import free_port, get_healthz, usage_error, wait_unix_listening

LOCAL = ("--interface", "127.0.0.1", "--port", "0")


def all_ready(server: ServerProcess, count: int = 2, after: int = 0) -> None:
    server.wait_for(rf"\] all {count} workers ready$", after=after)


def started_workers(server: ServerProcess) -> dict[int, int]:
    """Each worker's number and the pid of its latest process, from the log."""
    found = re.findall(r"\] worker (\d+) started \(pid (\d+)\)$", server.output, re.M)
    return {int(index): int(pid) for index, pid in found}


def healthz(port: int, status: int = 200) -> dict[str, Any]:
    """/healthz over a new connection, which must answer ``status``."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        assert response.status == status
        return json.loads(response.read())
    finally:
        connection.close()


def unix_healthz(path: Path) -> dict[str, Any]:
    """/healthz over a new connection to the unix socket at ``path``."""
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(str(path))
    status, body = get_healthz(sock, TIMEOUT)
    assert status == 200
    return json.loads(body)


def serving_workers(ask: Callable[[], dict[str, Any]], want: set[tuple[int, int]]) -> set:
    """The (worker, pid) pairs that answer /healthz, asked anew until all of
    ``want`` have answered (or 300 requests have gone by)."""
    seen = set()
    for _ in range(300):
        # Paced under the admission limits' connection rate (20 a second by
        # default), which would otherwise close the later requests unanswered.
        time.sleep(0.06)
        health = ask()
        seen.add((health["worker"], health["pid"]))
        if want <= seen:
            break
    return seen


def parent_of(pid: int) -> int:
    stat_line = Path(f"/proc/{pid}/stat").read_text()
    return int(stat_line[stat_line.rindex(")") + 2 :].split()[1])


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie counts: nobody runs it any more)."""
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat_line[stat_line.rindex(")") + 2] == "Z"


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
    except ConnectionRefusedError:
        return True
    return False


def restarted(server: ServerProcess, index: int, pid: int, how: str, mark: int) -> int:
    """Wait until the supervisor has restarted worker ``index`` after its
    process ``pid`` ended (``how``, a pattern); return the new pid once ready."""
    server.wait_for(
        rf"\[signaling\.ops\.workers#error\] worker {index} \(pid {pid}\) {how} "
        rf"after [\d.]+s; restarting it in {RESTART_DELAY}s$",
        after=mark,
    )
    line = server.wait_for(rf"\] worker {index} ready \(pid (\d+)\)$", after=mark)
    return int(line.group(1))


def open_client(port: int) -> ClientConnection:
    return connect(f"ws://127.0.0.1:{port}/connect", proxy=None, open_timeout=TIMEOUT)


# -- the option ------------------------------------------------------------------


def test_workers_option_values() -> None:
    assert parse_workers("3") == 3
    assert parse_workers("auto") == len(os.sched_getaffinity(0)) == cpu_count()
    for bad in ("0", "-2", "abc", "1.5", ""):
        with pytest.raises(ValueError, match="not a number of processes"):
            parse_workers(bad)
    config = Options()
    config.parseOptions([])
    assert config["workers"] == 1 and config.worker is None
    config = Options()
    config.parseOptions(["--workers", "auto", "--redis", SHARED_URL])
    assert config["workers"] == cpu_count()


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--workers", "0"], "'0' is not a number of processes (1 or more) nor auto"),
        (["--workers", "abc"], "'abc' is not a number of processes (1 or more) nor auto"),
        (
            ["--workers", "2", "--manhole", "tcp:0:interface=127.0.0.1", "--manhole-keys", "k"],
            "--manhole cannot be combined with --workers 2: the admin console sees",
        ),
        (
            ["--workers", "2", "--metrics-listen", "tcp:0:interface=127.0.0.1"],
            "--metrics-listen cannot be combined with --workers 2: each worker counts",
        ),
    ],
)
def test_bad_workers_options_are_usage_errors(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    output = usage_error(tmp_path, *LOCAL, *args)
    assert complaint in output
    assert "started (pid" not in output


def test_one_worker_is_todays_single_process(tmp_path: Path) -> None:
    with twistd(tmp_path, *LOCAL, "--workers", "1") as server:
        port = server.port
        health = healthz(port)
        assert "worker" not in health and "pid" not in health
        assert "[worker " not in server.output and "supervisor" not in server.output
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0


def test_auto_starts_one_worker_per_core(tmp_path: Path, shared_rooms: tuple[str, ...]) -> None:
    """twistd run on two cores (its CPU affinity, as taskset sets it)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs two cores")
    pin = (
        "import os, sys\n"
        f"os.sched_setaffinity(0, {set(cores[:2])!r})\n"
        "os.execv(sys.argv[1], sys.argv[1:])\n"
    )
    with twistd(
        tmp_path, *LOCAL, *shared_rooms, "--workers", "auto", wrapper=[sys.executable, "-c", pin]
    ) as server:
        all_ready(server, 2)
        assert sorted(started_workers(server)) == [0, 1]


def test_a_garbled_worker_role_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT, "{not json")
    with pytest.raises(
        UsageError, match=re.escape("SIGNALING_WORKER='{not json' is not a worker's role")
    ):
        Options().parseOptions(["--workers", "2", "--redis", SHARED_URL])


def test_worker_log_events_reach_the_supervisors_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a worker logs (a failure included) as the supervisor publishes it."""
    read_end, write_end = os.pipe()
    role = WorkerRole(index=3, sockets=(), log_fd=write_end)
    monkeypatch.setenv(ENVIRONMENT, role.to_environ())
    worker_log = Logger(namespace="signaling.test", observer=worker_log_observer())
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        worker_log.failure("it broke for {who}", who="client 7")
    worker_log.info("plain {n}", n=2)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        written = pipe.read()
    assert written.count(b"\n") == 2

    published: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(published.append)
    try:
        supervisor = Supervisor(1, ["twistd"], {}, SharedSockets(0), reactor=None)
        slot = supervisor.slots[0]
        slot.index = 3
        for line in written.splitlines():
            supervisor.line(slot, LOG_FD, line)
        supervisor.line(slot, 2, b"raw text on stderr")
    finally:
        globalLogPublisher.removeObserver(published.append)
    texts = [formatEventAsClassicLogText(event) for event in published]
    assert "[worker 3 signaling.test#critical] it broke for client 7" in texts[0]
    assert "builtins.ZeroDivisionError: division by zero" in texts[0]
    assert "[worker 3 signaling.test#info] plain 2" in texts[1]
    assert "[worker 3 stderr] raw text on stderr" in texts[2]
    assert [event["worker"] for event in published] == [3, 3, 3]


# -- sharing, restarting, stopping -----------------------------------------------


def test_two_workers_serve_one_port(tmp_path: Path, shared_rooms: tuple[str, ...]) -> None:
    with twistd(
        tmp_path, *LOCAL, *shared_rooms, "--workers", "2", "--log-level", "debug"
    ) as server:
        all_ready(server)
        port = server.port
        workers = started_workers(server)
        assert sorted(workers) == [0, 1]
        assert all(parent_of(pid) == server.pid for pid in workers.values())
        # The kernel hands each new connection to one of them: both answer.
        want = {(index, pid) for index, pid in workers.items()}
        assert serving_workers(lambda: healthz(port), want) == want

        # WebSocket clients too: the debug log names the worker each connected to.
        with contextlib.ExitStack() as stack:
            clients = [Client(stack.enter_context(open_client(port))) for _ in range(40)]
            served_by = {}
            for client in clients:
                line = server.wait_for(
                    rf"\[worker (\d) signaling\.wire\.protocol#debug\] connect {client.id} from"
                )
                served_by[client.id] = int(line.group(1))
            assert set(served_by.values()) == {0, 1}, served_by
            # Each is served in full by its own worker, rooms included.
            for client in clients:
                client.join(f"room-{client.id}")

            server.signal(signal.SIGTERM)
            for client in clients:
                assert client.expect_closed() == 1001
        assert server.wait_exit() == 0
        assert all(gone(pid) for pid in workers.values())
        assert refused(port)
        output = server.output
        for index, pid in workers.items():
            assert f"worker {index} (pid {pid}) exited with status 0" in output


def test_clients_of_different_workers_share_a_room(
    tmp_path: Path, shared_rooms: tuple[str, ...]
) -> None:
    """The workers share rooms through Redis: two clients accepted by
    different workers meet in one room."""
    with twistd(
        tmp_path, *LOCAL, *shared_rooms, "--workers", "2", "--log-level", "debug"
    ) as server:
        all_ready(server)
        port = server.port
        by_worker: dict[int, list[Client]] = {0: [], 1: []}
        with contextlib.ExitStack() as stack:
            for _ in range(60):
                client = Client(stack.enter_context(open_client(port)))
                line = server.wait_for(rf"\[worker (\d) \S+\] connect {client.id} from")
                by_worker[int(line.group(1))].append(client)
                if by_worker[0] and by_worker[1]:
                    break
            first, second = by_worker[0][0], by_worker[1][0]
            assert first.join("shared-name") == []
            assert second.join("shared-name") == [first.id]
            assert first.expect("new-client") == {"client_id": second.id}
            first.offer(second.id, "v=0")
            assert second.expect("offer") == {"client_id": first.id, "sdp": "v=0"}


def test_workers_without_redis_are_a_usage_error(tmp_path: Path) -> None:
    output = usage_error(tmp_path, *LOCAL, "--workers", "2")
    assert "--workers 2 needs --redis" in output


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(
    tmp_path: Path, shared_rooms: tuple[str, ...]
) -> None:
    with twistd(tmp_path, *LOCAL, *shared_rooms, "--workers", "2") as server:
        all_ready(server)
        port = server.port
        before = started_workers(server)
        mark = server.mark()
        os.kill(before[1], signal.SIGKILL)
        server.wait_for(rf"worker 1 \(pid {before[1]}\) was killed by SIGKILL", after=mark)
        assert healthz(port)["pid"] == before[0]  # meanwhile worker 0 serves alone
        after = restarted(server, 1, before[1], "was killed by SIGKILL", mark)
        assert after not in before.values() and parent_of(after) == server.pid
        assert gone(before[1])
        want = {(0, before[0]), (1, after)}
        assert serving_workers(lambda: healthz(port), want) == want
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        assert gone(before[0]) and gone(after)


def test_a_worker_stopped_from_outside_is_restarted_too(
    tmp_path: Path, shared_rooms: tuple[str, ...]
) -> None:
    """A worker given SIGTERM by someone else drains and exits 0; the
    supervisor starts another, and the unix socket it shared stays, with the
    mode it was made with."""
    path = tmp_path / "run" / "signaling.sock"
    path.parent.mkdir()
    with twistd(
        tmp_path,
        *shared_rooms,
        *("--listen", f"unix:{path}:mode=660", "--workers", "2", "--shutdown-timeout", "1"),
    ) as server:
        all_ready(server)
        wait_unix_listening(path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o660  # workers left it alone
        before = started_workers(server)
        mark = server.mark()
        os.kill(before[0], signal.SIGTERM)
        after = restarted(server, 0, before[0], "exited with status 0", mark)
        assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o660
        want = {(0, after), (1, before[1])}
        assert serving_workers(lambda: unix_healthz(path), want) == want
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
    assert not path.exists()  # removed at a clean stop, as by a single server


def test_sigint_stops_gracefully_once_and_twice_drops(
    tmp_path: Path, shared_rooms: tuple[str, ...]
) -> None:
    """SIGINT (Ctrl-C) reaches the supervisor, which passes SIGTERM on; a
    second one drops the clients still open, as a single server does."""
    args = ("--workers", "2", "--drain-delay", "30")
    with twistd(tmp_path, *LOCAL, *shared_rooms, *args) as server:
        all_ready(server)
        port = server.port
        with open_client(port) as ws:
            Client(ws)
            mark = server.mark()
            server.signal(signal.SIGINT)
            server.wait_for(r"SIGINT: stopping the workers", after=mark)
            server.wait_for(r"\[worker 0 \S+\] SIGTERM: draining for 30.0s", after=mark)
            server.wait_for(r"\[worker 1 \S+\] SIGTERM: draining for 30.0s", after=mark)
            # The supervisor has closed its own descriptor of the socket, but
            # the draining workers still accept on theirs.
            for _ in range(10):
                assert healthz(port, 503)["status"] == "draining"
            server.signal(signal.SIGINT)
            server.wait_for(r"SIGINT again: SIGTERM again to the 2 workers", after=mark)
            assert server.wait_exit(timeout=15) == 0
            with pytest.raises(ConnectionClosed):
                ws.recv(TIMEOUT)


def test_workers_leave_when_the_supervisor_is_killed(
    tmp_path: Path, shared_rooms: tuple[str, ...]
) -> None:
    with twistd(
        tmp_path, *LOCAL, *shared_rooms, "--workers", "2", "--shutdown-timeout", "1"
    ) as server:
        all_ready(server)
        port = server.port
        workers = started_workers(server)
        server.process.kill()
        server.wait_exit()
        assert wait_for(lambda: all(gone(pid) for pid in workers.values()), STARTUP_TIMEOUT)
        assert refused(port)


def test_a_port_in_use_stops_the_start(tmp_path: Path, shared_rooms: tuple[str, ...]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_once(
            tmp_path,
            "--interface",
            "127.0.0.1",
            "--port",
            str(port),
            *shared_rooms,
            "--workers",
            "2",
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert (
        f"cannot listen on 127.0.0.1 port {port}: Address already in use "
        "(is another server running there?)" in output
    )
    assert "Traceback" not in output and "started (pid" not in output


# Fails (status 3, before its log starts) the starts of worker 1 listed in
# FAIL_STARTS, counted in the file STARTS.
FAILING_WORKER = """\
import json, os, sys
role = os.environ.get("SIGNALING_WORKER")
if role and json.loads(role)["index"] == 1:
    count = os.environ["STARTS"]
    starts = int(open(count).read() or 0) + 1 if os.path.exists(count) else 1
    open(count, "w").write(str(starts))
    if str(starts) in os.environ["FAIL_STARTS"].split(","):
        sys.stderr.write(f"worker 1 refuses start {starts}\\n")
        sys.stderr.flush()
        os._exit(3)
"""


@pytest.fixture
def failing_env(tmp_path: Path) -> Iterator[Callable[[str], dict[str, str]]]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAILING_WORKER)

    def env(fail_starts: str) -> dict[str, str]:
        base = source_env()
        return base | {
            "PYTHONPATH": os.pathsep.join([str(site), base["PYTHONPATH"]]),
            "STARTS": str(tmp_path / "starts"),
            "FAIL_STARTS": fail_starts,
        }

    yield env


def test_a_worker_that_fails_to_start_stops_the_server(
    tmp_path: Path, failing_env: Callable[[str], dict[str, str]], shared_rooms: tuple[str, ...]
) -> None:
    with twistd(tmp_path, *LOCAL, *shared_rooms, "--workers", "2", env=failing_env("1")) as server:
        assert server.wait_exit() == 1
        output = server.output
    assert "[worker 1 stderr] worker 1 refuses start 1" in output
    assert re.search(
        r"worker 1 \(pid \d+\) exited with status 3 before it was ready; stopping", output
    ), output
    assert "all 2 workers ready" not in output
    worker_0 = started_workers(server)[0]
    assert gone(worker_0)


def test_a_crash_loop_backs_off(
    tmp_path: Path, failing_env: Callable[[str], dict[str, str]], shared_rooms: tuple[str, ...]
) -> None:
    with twistd(
        tmp_path, *LOCAL, *shared_rooms, "--workers", "2", env=failing_env("2,3")
    ) as server:
        all_ready(server)
        port = server.port
        first = started_workers(server)[1]
        mark = server.mark()
        os.kill(first, signal.SIGKILL)
        started = time.monotonic()
        server.wait_for(r"\] worker 1 ready \(pid \d+\)$", after=mark, timeout=30)
        took = time.monotonic() - started
        delays = re.findall(
            r"worker 1 \(pid \d+\) (?:was killed by SIGKILL|exited with status 3) "
            r"after [\d.]+s; restarting it in ([\d.]+)s",
            server.output,
        )
        assert delays == ["0.5", "1.0", "2.0"], server.output
        assert took >= 3.5
        # ready means serving; joining the cluster in Redis follows at once
        assert wait_for(lambda: healthz(port)["status"] == "ok")


# -- logs, systemd, TLS ------------------------------------------------------------


def test_json_log_lines_name_their_worker(tmp_path: Path, shared_rooms: tuple[str, ...]) -> None:
    """With the JSON logger, the workers' records (their standard error's
    lines too) come out on the supervisor's standard output, each with a
    ``worker`` field. (The supervisor's own standard error is the
    interpreter's, e.g. a library's import-time warnings.)"""
    twistd_script = str(Path(sys.executable).parent / "twistd")
    argv = [twistd_script, "--nodaemon", "--pidfile=", "--logger", "signaling.logs.json_observer"]
    argv += ["signaling", *LOCAL, *shared_rooms, "--workers", "2"]
    stdout = tmp_path / "stdout"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            argv, cwd=tmp_path, env=source_env(), stdout=out, stderr=subprocess.DEVNULL
        )
    try:
        assert wait_for(
            lambda: b'"message":"all 2 workers ready"' in stdout.read_bytes(), STARTUP_TIMEOUT
        ), stdout.read_text()
    finally:
        process.terminate()
        assert process.wait(STARTUP_TIMEOUT) == 0
    records = [json.loads(line) for line in stdout.read_text().splitlines()]
    connect_lines = [r for r in records if r["message"].startswith("clients connect to")]
    assert sorted(r.get("worker") for r in connect_lines if "worker" in r) == [0, 1]
    assert any("worker" not in r for r in connect_lines)  # the supervisor's own
    shut_down = {r.get("worker") for r in records if r["message"] == "Server Shut Down."}
    assert shut_down == {None, 0, 1}  # the workers and the supervisor


def test_systemd_hears_ready_once_every_worker_is(
    tmp_path: Path, notify_socket: tuple[socket.socket, str], shared_rooms: tuple[str, ...]
) -> None:
    """Socket activation: the supervisor adopts systemd's socket, the workers
    share it, and only the supervisor notifies systemd."""
    notifications, notify_path = notify_socket
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        with socket_activated(
            tmp_path,
            listening,
            notify_path,
            "--listen",
            "systemd:domain=INET:name=signaling",
            "--workers",
            "2",
            *shared_rooms,
        ) as server:
            assert received(notifications)[0] == "READY=1"
            listening.close()  # from now on only the server holds the socket
            server.wait_for(r"told systemd READY=1")
            lines = server.output.splitlines()
            told = next(i for i, line in enumerate(lines) if "told systemd READY=1" in line)
            for index in (0, 1):
                assert any(f"] worker {index} ready (pid" in line for line in lines[:told])
            workers = started_workers(server)
            want = {(index, pid) for index, pid in workers.items()}
            assert serving_workers(lambda: healthz(port), want) == want
            server.signal(signal.SIGTERM)
            assert received(notifications)[0] == "STOPPING=1"
            assert server.wait_exit() == 0
            notifications.settimeout(0.5)
            with pytest.raises(TimeoutError):  # the workers said nothing
                notifications.recv(4096)
    assert refused(port)


def test_workers_serve_wss_and_reload_on_sighup(
    tmp_path: Path, ca: CertificateAuthority, ca_file: Path, shared_rooms: tuple[str, ...]
) -> None:
    live = tmp_path / "live"
    cert, key = ca.write_server(live, "first")
    port = free_port()
    args = ["--listen-tls", f"tcp:{port}:interface=127.0.0.1", "--tls-cert", str(cert)]
    args += ["--tls-key", str(key), "--tls-reload-interval", "0", "--workers", "2", *shared_rooms]
    with twistd(tmp_path, *args) as server:
        all_ready(server)
        with wss_client(port, ca_file) as client:
            assert served_name(client) == "first"
            assert client.join("tls-room") == []
        staging = tmp_path / "staging"
        new_cert, new_key = ca.write_server(staging, "second")
        os.replace(new_cert, live / "fullchain.pem")
        os.replace(new_key, live / "privkey.pem")
        mark = server.mark()
        server.signal(signal.SIGHUP)
        server.wait_for(r"SIGHUP: passed on to 2 workers", after=mark)
        for index in (0, 1):
            server.wait_for(
                rf"\[worker {index} \S+\] TLS certificate reloaded: CN=second", after=mark
            )
        for _ in range(6):  # whichever worker takes it
            with wss_client(port, ca_file) as client:
                assert served_name(client) == "second"
        assert server.alive()
