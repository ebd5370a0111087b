"""``--workers N``: a supervisor and N worker processes sharing the listening sockets.

The supervisor binds every listening socket once, in
``privilegedStartService`` as a single server does (so a port that cannot be
had stops the start the same way, before any worker exists, and ports below
1024 can be bound before twistd drops privileges), and never accepts on
them. Once its reactor runs it starts N workers: ``twistd signaling`` again,
with the same options, in the directory it started in. The environment
(:data:`ENVIRONMENT`) tells a worker that it is one, its number, and which
inherited descriptors are the sockets, in the order of the listeners.

Why shared descriptors rather than each worker binding with SO_REUSEPORT:
the supervisor's sockets are the only way to serve a socket systemd passes
in (one descriptor, inherited), a unix socket (SO_REUSEPORT does not
spread those) or ``--port 0`` (each worker would get a port of its own);
bind errors are found once, at start; a connection that waits in the
shared accept queue while a worker restarts is taken by another worker
instead of being reset with the dead worker's own queue; and no other
program of the same user can join the group and take connections. The
price: the kernel hands each connection to whichever worker accepts first,
which spreads load less evenly than SO_REUSEPORT's hashing.

A worker talks to the supervisor through pipes, never the network:

- its standard input is the supervisor's pipe; end of input means the
  supervisor is gone, and the worker shuts down gracefully (no orphans);
- descriptor :data:`LOG_FD`: its log events, one JSON object a line
  (twistd's ``--logger`` is :func:`worker_log_observer`), which the
  supervisor publishes in its own log with ``worker N`` in front;
- descriptor :data:`STATUS_FD`: ``ready`` once its reactor runs (its
  listeners have adopted their sockets by then).

Standard output and error are relayed to the supervisor's log line by line.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

# Python's documented way out without unwinding (the underscore is not a
# private name of a library here).
from os import _exit as exit_now
from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.address import UNIXAddress
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import ConnectionDone, ProcessExitedAlready, ReactorNotRunning
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IReadDescriptor
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.logger import ILogObserver, LogEvent, LogLevel, eventAsJSON, eventFromJSON
from twisted.logger import globalLogPublisher as _global_log_publisher
from twisted.python.failure import Failure
from twisted.python.reflect import safe_str
from zope.interface import implementer, provider

from signaling.core.clock import cancel
from signaling.logs import ServerLogger
from signaling.ops.listen import Listener, ListeningService, where_clients_connect
from signaling.ops.signals import install_handler
from signaling.ops.systemd import notify
from signaling.wire import compat

_log = ServerLogger()

#: The environment variable that makes ``twistd signaling`` a worker.
ENVIRONMENT = "SIGNALING_WORKER"
#: A worker's descriptors: its log events, its status, its first socket.
LOG_FD = 3
STATUS_FD = 4
FIRST_SOCKET_FD = 5
#: What systemd gives the process it starts, which a worker must not take
#: as its own (only the supervisor talks to systemd).
SYSTEMD_VARIABLES = ("NOTIFY_SOCKET", "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")

#: Seconds before restarting a worker that died; doubled for each death
#: in a row of a worker that lived less than STABLE_AFTER seconds, up to
#: MAX_RESTART_DELAY.
RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 30.0
STABLE_AFTER = 10.0
#: Seconds beyond --drain-delay and --shutdown-timeout that the supervisor
#: waits for a worker to exit after SIGTERM before it kills it.
STOP_GRACE = 10.0
#: The longest line read from a worker's pipe; longer ones are cut.
MAX_LINE = 1 << 20


def cpu_count() -> int:
    """The cores this process may run on (its CPU affinity), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def parse_workers(value: str) -> int:
    """``--workers``: a number of processes >= 1, or ``auto`` for one per core."""
    if value == "auto":
        return cpu_count()
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"{value!r} is not a number of processes (1 or more) nor auto")
    return number


@dataclass(frozen=True)
class WorkerRole:
    """What makes a process a worker: its number and inherited descriptors."""

    index: int
    #: The listening sockets, in the order of the listeners.
    sockets: tuple[int, ...]
    log_fd: int = LOG_FD
    status_fd: int = STATUS_FD

    def to_environ(self) -> str:
        return json.dumps(
            {
                "index": self.index,
                "sockets": list(self.sockets),
                "log": self.log_fd,
                "status": self.status_fd,
            }
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> WorkerRole | None:
        """The role :data:`ENVIRONMENT` gives (None without it); ValueError
        if it is not one the supervisor writes."""
        value = environ.get(ENVIRONMENT)
        if not value:
            return None
        try:
            data = json.loads(value)
            return cls(
                index=int(data["index"]),
                sockets=tuple(int(fd) for fd in data["sockets"]),
                log_fd=int(data["log"]),
                status_fd=int(data["status"]),
            )
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{ENVIRONMENT}={value!r} is not a worker's role: {e}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def worker_log_observer() -> ILogObserver:
    """twistd's ``--logger`` in a worker: each event as one JSON line on
    the log descriptor, for the supervisor to publish. Once the supervisor
    has gone (the pipe is broken), events are dropped."""
    role = WorkerRole.from_environ(os.environ)
    fd = role.log_fd if role is not None else sys.stderr.fileno()
    os.set_blocking(fd, True)
    lock = threading.Lock()
    broken = False

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        nonlocal broken
        if broken:
            return
        failure = event.get("log_failure")
        if isinstance(failure, Failure):
            # The exception itself does not survive JSON; its text does.
            failure = copy.copy(failure)
            cast(Any, failure).value = safe_str(failure.value)
            event = {**event, "log_failure": failure}
        line = eventAsJSON(event).encode("utf-8", "replace") + b"\n"
        with lock:
            try:
                _write_all(fd, line)
            except OSError:
                broken = True

    return observe


@implementer(IReadDescriptor)
class _EndOfInput:
    """Calls ``on_end`` when the pipe at ``fd`` reaches its end."""

    def __init__(self, fd: int, on_end: Callable[[], None]) -> None:
        self.fd = fd
        self.on_end = on_end
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "supervisor pipe"

    def doRead(self) -> Any:
        try:
            if os.read(self.fd, 4096):
                return None
        except BlockingIOError:
            return None
        except OSError:
            pass
        return ConnectionDone()

    def connectionLost(self, reason: Failure) -> None:
        self.on_end()


class WorkerLink(Service):
    """A worker's side of the pipes to its supervisor.

    Once the reactor runs (every listener has adopted its socket by then)
    and ``before_ready`` has fired (the shared rooms are reached, say), it
    writes ``ready`` to the status descriptor; when its standard input
    ends (the supervisor has gone, however it died) it stops the reactor,
    which shuts the worker down gracefully. SIGINT is ignored: a Ctrl-C in
    a terminal reaches every process of the group, and the supervisor
    passes it on as SIGTERM, so a worker would otherwise take one Ctrl-C
    for two signals and drop its clients at once.
    """

    def __init__(
        self,
        role: WorkerRole,
        reactor: Any,
        stdin: int = 0,
        before_ready: Callable[[], Deferred[None]] | None = None,
    ) -> None:
        self.role = role
        self._reactor = reactor
        self._stdin = stdin
        self._before_ready = before_ready

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._running)

    def _running(self) -> None:
        if not self.running:
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        self._reactor.addReader(_EndOfInput(self._stdin, self._supervisor_gone))
        if self._before_ready is not None:
            self._before_ready().addCallback(lambda _: self._ready())
        else:
            self._ready()

    def _ready(self) -> None:
        if not self.running:
            return
        try:
            _write_all(self.role.status_fd, b"ready\n")
        except OSError:
            self._supervisor_gone()

    def _supervisor_gone(self) -> None:
        if self.running:
            _log.warn("the supervisor has gone: shutting down")
            with contextlib.suppress(ReactorNotRunning):
                self._reactor.stop()


class _SocketHolder(Factory):
    """The factory of the supervisor's listening ports, which never accept."""

    noisy = False

    def logPrefix(self) -> str:
        return "supervisor"


class SharedSockets:
    """The supervisor's listening ports: bound, and never read (the workers
    accept on them)."""

    def __init__(self, count: int) -> None:
        self.ports: list[Any] = [None] * count

    def hold(self, index: int, port: IListeningPort) -> None:
        held: Any = port
        held.stopReading()
        compat.share_listening_port(port)
        self.ports[index] = port

    def fds(self) -> list[int]:
        return [port.fileno() for port in self.ports]

    def close_tcp(self) -> list[Deferred[None]]:
        """Close the supervisor's descriptors of the TCP sockets: each closes
        once the last worker has closed its own too. (A unix socket's file is
        removed when the supervisor stops, once the workers have exited.)"""
        closing = []
        for port in self.ports:
            if port is not None and not isinstance(port.getHost(), UNIXAddress):
                closing.append(maybeDeferred(port.stopListening))
        return closing


@dataclass
class _Slot:
    """One worker's place: the process in it now, and its restarts."""

    index: int
    process: Any = None
    pid: int | None = None
    started_at: float = 0.0
    ready: bool = False
    #: Deaths in a row of a worker that lived less than STABLE_AFTER.
    quick_deaths: int = 0
    restart: IDelayedCall | None = None


class _WorkerProcess(ProcessProtocol):
    """The supervisor's end of one worker process's pipes."""

    def __init__(self, supervisor: Supervisor, slot: _Slot) -> None:
        self.supervisor = supervisor
        self.slot = slot
        self.buffers: dict[int, bytes] = {}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        pending = self.buffers.get(childFD, b"") + data
        *lines, rest = pending.split(b"\n")
        if len(rest) > MAX_LINE:
            lines.append(rest)
            rest = b""
        self.buffers[childFD] = rest
        for line in lines:
            self.supervisor.line(self.slot, childFD, line)

    def childConnectionLost(self, childFD: int) -> None:
        rest = self.buffers.pop(childFD, b"")
        if rest:
            self.supervisor.line(self.slot, childFD, rest)

    def processEnded(self, reason: Failure) -> None:
        for childFD in list(self.buffers):
            self.childConnectionLost(childFD)
        self.supervisor.ended(self.slot, reason)


def _how_it_ended(reason: Failure) -> str:
    number = getattr(reason.value, "signal", None)
    if number is not None:
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"was killed by {name}"
    return f"exited with status {getattr(reason.value, 'exitCode', None)}"


def _exit_with_status_1() -> None:
    """Make this process exit with status 1 once twistd is done: twistd
    exits 0 whatever stopped its reactor."""

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            with contextlib.suppress(Exception):
                stream.flush()  # type: ignore[union-attr]
        exit_now(1)

    atexit.register(leave)


class Supervisor(MultiService):
    """Starts ``count`` workers on the sockets its child services (the
    listeners) bind, restarts any that dies, passes signals on, and tells
    systemd READY=1 once every worker is ready.

    SIGTERM or SIGINT stops the reactor, which stops this service: every
    worker gets SIGTERM (a graceful shutdown, with its own
    ``--drain-delay`` and ``--shutdown-timeout``), the supervisor closes its
    own descriptors of the TCP sockets, waits for every worker to exit
    (killing any still running ``stop_timeout`` seconds later) and then
    closes the rest (removing unix sockets' files). A second SIGTERM or
    SIGINT is passed on as SIGTERM, which makes the workers drop their
    remaining clients at once; SIGHUP is passed on (certificate reload).

    A worker that exits before it was ever ready, while the workers start
    for the first time, stops the whole server with status 1 (it would only
    fail again); later, a worker that exits for whatever reason is
    restarted, after a delay that grows while it keeps dying young.
    """

    def __init__(
        self,
        count: int,
        argv: Sequence[str],
        environ: Mapping[str, str],
        sockets: SharedSockets,
        reactor: Any,
        *,
        cwd: str | None = None,
        stop_timeout: float = STOP_GRACE,
        notify_environ: Mapping[str, str] = os.environ,
    ) -> None:
        super().__init__()
        self.count = count
        self.argv = list(argv)
        self.environ = {k: v for k, v in environ.items() if k not in SYSTEMD_VARIABLES}
        self.sockets = sockets
        self.cwd = cwd
        self.stop_timeout = stop_timeout
        self.notify_environ = notify_environ
        self.slots = [_Slot(index) for index in range(count)]
        self.all_ready = False
        self.failed = False
        self._reactor = reactor
        self._stopping = False
        self._signalled = False
        self._gone: Deferred[None] | None = None
        self._kill_call: IDelayedCall | None = None
        self._restore_handlers: list[Callable[[], None]] = []

    # -- starting ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self._start)

    def _start(self) -> None:
        if not self.running:
            return
        self._restore_handlers = [
            install_handler(self._reactor, signal.SIGTERM, self._on_stop_signal),
            install_handler(self._reactor, signal.SIGINT, self._on_stop_signal),
            install_handler(self._reactor, signal.SIGHUP, self._on_sighup),
        ]
        _log.info("starting {count} workers", count=self.count)
        for slot in self.slots:
            self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.restart = None
        if self._stopping:
            return
        fds = self.sockets.fds()
        role = WorkerRole(slot.index, tuple(range(FIRST_SOCKET_FD, FIRST_SOCKET_FD + len(fds))))
        child_fds: dict[int, int | str] = {0: "w", 1: "r", 2: "r", LOG_FD: "r", STATUS_FD: "r"}
        child_fds.update(zip(role.sockets, fds, strict=True))
        env = {**self.environ, ENVIRONMENT: role.to_environ()}
        slot.ready = False
        slot.started_at = self._reactor.seconds()
        try:
            process = self._reactor.spawnProcess(
                _WorkerProcess(self, slot),
                self.argv[0],
                self.argv,
                env=env,
                path=self.cwd,
                childFDs=child_fds,
            )
        except OSError as e:
            slot.pid = None
            self._lost(slot, None, f"could not be started ({e})")
            return
        slot.process = process
        slot.pid = process.pid
        _log.info("worker {worker} started (pid {pid})", worker=slot.index, pid=slot.pid)

    # -- what the workers say -----------------------------------------------

    def line(self, slot: _Slot, fd: int, line: bytes) -> None:
        """A line a worker wrote to descriptor ``fd``."""
        if fd == LOG_FD:
            self._publish(slot, line)
        elif fd == STATUS_FD:
            if line.strip() == b"ready":
                self._ready(slot)
        else:
            stream = "stdout" if fd == 1 else "stderr"
            _log.emit(
                LogLevel.info if fd == 1 else LogLevel.warn,
                "{line}",
                line=line.decode("utf-8", "replace"),
                log_system=f"worker {slot.index} {stream}",
                worker=slot.index,
            )

    def _publish(self, slot: _Slot, line: bytes) -> None:
        try:
            event = eventFromJSON(line.decode("utf-8", "replace"))
        except ValueError:
            event = None
        if not isinstance(event, dict):
            self.line(slot, 2, line)
            return
        for key in ("log_logger", "log_source", "log_trace"):
            event.pop(key, None)  # objects of the worker's, not restored
        system = event.get("log_system")
        if system is None:
            level = getattr(event.get("log_level"), "name", "-")
            system = f"{event.get('log_namespace', '-')}#{level}"
        event["log_system"] = f"worker {slot.index} {system}"
        event["worker"] = slot.index
        _global_log_publisher(event)

    def _ready(self, slot: _Slot) -> None:
        if slot.ready or slot.process is None:
            return
        slot.ready = True
        _log.info("worker {worker} ready (pid {pid})", worker=slot.index, pid=slot.pid)
        if not self.all_ready and all(s.ready for s in self.slots):
            self.all_ready = True
            _log.info("all {count} workers ready", count=self.count)
            status = f"READY=1\nSTATUS={self.count} workers accepting connections"
            if notify(status, self.notify_environ):
                _log.info("told systemd READY=1")

    # -- workers that end ----------------------------------------------------

    def ended(self, slot: _Slot, reason: Failure) -> None:
        """The worker process in ``slot`` has exited (and been reaped)."""
        slot.process = None
        self._lost(slot, slot.pid, _how_it_ended(reason))

    def _lost(self, slot: _Slot, pid: int | None, how: str) -> None:
        was_ready, slot.ready = slot.ready, False
        if self._stopping:
            _log.info("worker {worker} (pid {pid}) {how}", worker=slot.index, pid=pid, how=how)
            if self._gone is not None and not self._running_slots():
                self._gone.callback(None)
            return
        if not was_ready and not self.all_ready:
            self._fail(
                f"worker {slot.index} (pid {pid}) {how} before it was ready; stopping "
                "(its log is above)"
            )
            return
        lived = self._reactor.seconds() - slot.started_at
        if lived >= STABLE_AFTER:
            slot.quick_deaths = 0
        slot.quick_deaths += 1
        delay = min(RESTART_DELAY * 2 ** (slot.quick_deaths - 1), MAX_RESTART_DELAY)
        _log.error(
            "worker {worker} (pid {pid}) {how} after {lived:.1f}s; restarting it in {delay}s",
            worker=slot.index,
            pid=pid,
            how=how,
            lived=lived,
            delay=delay,
        )
        slot.restart = self._reactor.callLater(delay, self._spawn, slot)

    def _fail(self, message: str) -> None:
        _log.error("{problem}", problem=message)
        if not self.failed:
            self.failed = True
            _exit_with_status_1()
        with contextlib.suppress(ReactorNotRunning):
            self._reactor.stop()

    # -- signals and stopping ------------------------------------------------

    def _running_slots(self) -> list[_Slot]:
        return [slot for slot in self.slots if slot.process is not None]

    def _signal_workers(self, signum: int, *, ready_only: bool = False) -> int:
        running = [slot for slot in self._running_slots() if slot.ready or not ready_only]
        for slot in running:
            with contextlib.suppress(ProcessExitedAlready, OSError):
                slot.process.signalProcess(signum)
        return len(running)

    def _on_stop_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping or self._signalled:
            count = self._signal_workers(signal.SIGTERM)
            _log.info(
                "{signal} again: SIGTERM again to the {count} workers still running "
                "(they drop their remaining connections)",
                signal=name,
                count=count,
            )
            return
        self._signalled = True
        _log.info("{signal}: stopping the workers", signal=name)
        with contextlib.suppress(ReactorNotRunning):
            self._reactor.stop()

    def _on_sighup(self, signum: int) -> None:
        # A worker that is still starting has no SIGHUP handler yet (SIGHUP
        # would kill it); it reads the certificate files as it starts anyway.
        count = self._signal_workers(signal.SIGHUP, ready_only=True)
        _log.info("SIGHUP: passed on to {count} workers", count=count)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        self._stopping = True
        for slot in self.slots:
            cancel(slot.restart)
            slot.restart = None
        notify("STOPPING=1\nSTATUS=stopping the workers", self.notify_environ)
        closing = self.sockets.close_tcp()
        self._gone = Deferred()
        running = self._running_slots()
        if running:
            _log.info("stopping {count} workers (SIGTERM)", count=len(running))
            self._signal_workers(signal.SIGTERM)
            self._kill_call = self._reactor.callLater(self.stop_timeout, self._kill)
        else:
            self._gone.callback(None)

        def stop_listeners(_: object) -> Deferred[Any]:
            cancel(self._kill_call)
            self._kill_call = None
            for restore in self._restore_handlers:
                restore()
            self._restore_handlers = []
            return maybeDeferred(MultiService.stopService, self)

        done: Deferred[Any] = DeferredList([self._gone, *closing], consumeErrors=True)
        return done.addCallback(stop_listeners).addCallback(lambda _: None)

    def _kill(self) -> None:
        self._kill_call = None
        for slot in self._running_slots():
            _log.error(
                "worker {worker} (pid {pid}) still running {timeout}s after SIGTERM; killing it",
                worker=slot.index,
                pid=slot.pid,
                timeout=self.stop_timeout,
            )
            with contextlib.suppress(ProcessExitedAlready, OSError):
                slot.process.signalProcess(signal.SIGKILL)


def worker_argv(twistd_options: Mapping[str, Any], argv: Sequence[str]) -> list[str]:
    """The command line of a worker: this interpreter running the twistd
    this process runs, in the foreground with no pid file, logging to the
    supervisor, with the same reactor and the same ``signaling`` options."""
    script = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if os.path.isfile(script):
        command = [sys.executable, script]
    else:  # not started by a twistd script
        command = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
    command += ["--nodaemon", "--pidfile=", "--logger", f"{__name__}.worker_log_observer"]
    reactor_name = twistd_options.get("reactor")
    if reactor_name:
        command += ["--reactor", reactor_name]
    return [*command, "signaling", *argv]


def supervisor_service(
    count: int,
    listeners: Sequence[Listener],
    argv: Sequence[str],
    reactor: Any,
    *,
    demo: bool,
    stop_timeout: float,
) -> Supervisor:
    """The supervisor's service: the listeners bound (and logged) as a
    single server binds them, and ``count`` workers started with ``argv``."""
    sockets = SharedSockets(len(listeners))
    supervisor = Supervisor(
        count, argv, os.environ, sockets, reactor, cwd=os.getcwd(), stop_timeout=stop_timeout
    )
    for index, listener in enumerate(listeners):

        def describe(address: Any, secure: bool = listener.secure) -> str:
            return where_clients_connect(address, secure, demo)

        def hold(port: IListeningPort, index: int = index) -> None:
            sockets.hold(index, port)

        ListeningService(
            listener.option,
            listener.description,
            _SocketHolder(),
            reactor,
            describe,
            on_listening=hold,
        ).setServiceParent(supervisor)
    return supervisor
