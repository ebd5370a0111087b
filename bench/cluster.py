"""Rooms shared through Redis (``--redis``): several server processes.

relay across processes
    The relay scenario with each room's two members on two different
    processes (``split``: every relayed message crosses through Redis), all
    on one process with ``--redis`` (``local``: none does), or on one
    process without Redis (``plain``). Server CPU is summed over the
    processes; Redis's own CPU is read from ``/proc`` of its process when it
    runs on this machine.
join storm
    Clients connect at once, half to each of two processes; the i-th client
    greeted by each process joins room i, so every room spans both.
node loss
    Pairs split over two processes; one is killed with SIGKILL and the time
    until every member on the other hears ``leave-client`` is measured.

Each run uses a Redis key prefix of its own and deletes its keys after.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from .measure import Meter
from .relay import Pair, Run, drive, per_message, relay_figures
from .rooms import Rooms
from .server import STARTUP_TIMEOUT, Server
from .twistd import _TICKS
from .wsclient import Tally, WsClient, connect_many, start_connection

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

#: How the relay scenario places its servers: processes, whether with
#: --redis, and workers per process (--workers; those are not pinned).
SETUPS = {
    "split": (2, True, 1),
    "local": (1, True, 1),
    "plain": (1, False, 1),
    "workers": (1, True, 2),
}
#: The setups run unless --setups says otherwise.
DEFAULT_SETUPS = ("split", "local", "plain")

#: Storm clients started in one turn of the generator's loop (as in crowd.py).
STORM_BATCH = 500


class RedisAdmin:
    """A plain, blocking connection to the Redis the servers use (on this
    machine): its process id, and deleting a run's keys."""

    def __init__(self, url: str) -> None:
        from signaling.backplane.redis import parse_url

        address = parse_url(url)
        if address.tls or address.host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError(f"the benchmark uses a Redis on this machine, without TLS: {url}")
        self.address = address

    def command(self, *args: str | int) -> Any:
        """Send the commands to select the database (and log in), then ``args``;
        the last reply (an error reply raises)."""
        import hiredis

        a = self.address
        commands: list[Any] = []
        if a.password is not None:
            login: tuple[str, ...] = (a.username, a.password) if a.username else (a.password,)
            commands.append(("AUTH", *login))
        commands += [("SELECT", a.db), args]
        reader = hiredis.Reader()
        replies: list[Any] = []
        with socket.create_connection((a.host, a.port), timeout=10) as sock:
            sock.sendall(b"".join(hiredis.pack_command(c) for c in commands))
            while len(replies) < len(commands):
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("Redis closed the connection")
                reader.feed(data)
                while (reply := reader.gets()) is not False:
                    replies.append(reply)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies[-1]

    def pid(self) -> int | None:
        """Redis's process id, if that process is visible here as redis-server."""
        info = self.command("INFO", "server").decode()
        for line in info.splitlines():
            if line.startswith("process_id:"):
                pid = int(line.split(":", 1)[1])
                try:
                    name = Path(f"/proc/{pid}/comm").read_text().strip()
                except OSError:
                    return None
                return pid if name.startswith("redis-server") else None
        return None

    def forget(self, prefix: str) -> int:
        """Delete every key under ``prefix``; how many there were."""
        script = (
            "local n = 0 "
            "for _, key in ipairs(redis.call('KEYS', ARGV[1] .. '*')) do "
            "redis.call('DEL', key) n = n + 1 end return n"
        )
        return int(self.command("EVAL", script, 0, prefix))


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (its workers)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def process_cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class Cluster:
    """``processes`` servers, with ``--redis URL --redis-prefix P`` (a fresh
    prefix) or without Redis; quacks like :class:`~bench.server.Server` for
    the command line (alive, log_tail, stop), with CPU summed."""

    def __init__(
        self,
        processes: int,
        redis: str | None,
        options: list[str],
        pin: bool,
        node_timeout: float | None = None,
        workers: int = 1,
    ) -> None:
        self.redis = RedisAdmin(redis) if redis else None
        self.prefix = f"signaling-bench:{uuid.uuid4().hex}:"
        self.redis_pid = self.redis.pid() if self.redis else None
        extra = list(options)
        if redis:
            extra += ["--redis", redis, "--redis-prefix", self.prefix]
            if node_timeout is not None:
                extra += ["--node-timeout", str(node_timeout)]
        if workers > 1:
            extra += ["--workers", str(workers)]
            pin = False  # the workers need the cores
        self.workers = workers
        self.servers: list[Server] = []
        self.killed: set[int] = set()
        try:
            for _ in range(processes):
                self.servers.append(Server(extra, pin))
            if redis:
                for server in self.servers:
                    self._await_registered(server, workers)
        except BaseException:
            self.stop()
            raise
        self.started = time.monotonic()

    @staticmethod
    def _await_registered(server: Server, workers: int) -> None:
        """Until ``workers`` processes behind the port (each answers /healthz
        in turn) say they have joined the cluster."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        ready: set[object] = set()
        while len(ready) < workers:
            health = server.health()
            if health.get("status") == "ok":
                ready.add(health.get("pid"))
            if time.monotonic() > deadline or not server.alive():
                raise RuntimeError("the server did not join the cluster:\n" + server.log_tail())
            time.sleep(0.02)

    @property
    def ports(self) -> list[int]:
        return [server.port for server in self.servers]

    def cpu_seconds(self) -> float:
        """CPU seconds of every server process not killed, and of their
        workers (summed)."""
        total = 0.0
        for i, server in enumerate(self.servers):
            if i in self.killed:
                continue
            total += server.cpu_seconds()
            if self.workers > 1:
                total += sum(process_cpu_seconds(pid) for pid in children(server.pid))
        return total

    def redis_cpu_seconds(self) -> float | None:
        if self.redis_pid is None:
            return None
        try:
            return process_cpu_seconds(self.redis_pid)
        except OSError:
            return None

    def kill(self, index: int) -> None:
        """SIGKILL server ``index``, as a crash would."""
        self.killed.add(index)
        self.servers[index].process.signal(signal.SIGKILL)
        self.servers[index].process.wait_exit(STARTUP_TIMEOUT)

    def alive(self) -> bool:
        return all(s.alive() for i, s in enumerate(self.servers) if i not in self.killed)

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(
            f"--- server {i} ---\n{s.log_tail(lines)}" for i, s in enumerate(self.servers)
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()
        if self.redis is not None:
            self.redis.forget(self.prefix)


class ClusterMeter(Meter):
    """A :class:`Meter` over the cluster, with Redis's CPU over the same window."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        super().__init__(cluster)

    def start(self) -> None:
        self.redis_cpu = self.cluster.redis_cpu_seconds()
        super().start()

    def stop(self) -> dict[str, float]:
        usage = super().stop()
        redis = self.cluster.redis_cpu_seconds()
        if redis is not None and self.redis_cpu is not None:
            usage["redis_cpu_seconds"] = redis - self.redis_cpu
        return usage


def _redis_figures(usage: dict[str, float], count: int) -> dict[str, float | None]:
    seconds = usage.get("redis_cpu_seconds")
    return {
        "redis_cpu_seconds": seconds,
        "redis_cpu_us_per_msg": None if seconds is None else per_message(seconds, count),
        "redis_cpu_pct": None if seconds is None else 100 * seconds / usage["seconds"],
    }


async def _connect_split(
    cluster: Cluster, tally: Tally, pairs: int, timeout: float
) -> tuple[Rooms, list[list[WsClient]]]:
    """``pairs`` rooms of two; with two servers, member 0 of each room is on
    the first and member 1 on the second, else both on the one server."""
    ports = cluster.ports
    per_server = [pairs * 2 // len(ports)] * len(ports)
    groups = [
        await connect_many(port, tally, count, timeout)
        for port, count in zip(ports, per_server, strict=True)
    ]
    rooms = Rooms(tally, 2 * pairs, 2, "cluster")
    members = [c for pair in zip(*groups, strict=True) for c in pair]
    if len(groups) == 1:
        members = groups[0]
    for client in members:
        rooms.join(client)
    await asyncio.wait_for(rooms.done, timeout)
    rooms.verify()
    return rooms, groups


async def cluster_relay(
    cluster: Cluster,
    tally: Tally,
    setup: str,
    pairs: int,
    inflight: int,
    window: float = 5.0,
    warmup: float = 2.0,
    drain: float = 10.0,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """The relay scenario over ``cluster`` (placed as ``setup`` says)."""
    try:
        rooms, groups = await _connect_split(cluster, tally, pairs, timeout)
        run = Run()
        all_pairs = [Pair(run, *members) for members in rooms.members.values()]
        if setup == "split":
            for pair in all_pairs:  # every relay must cross processes
                if pair.offerer.port == pair.answerer.port:
                    raise RuntimeError("a pair is on one process")
        delivered, usage = await drive(
            run, all_pairs, lambda: ClusterMeter(cluster), tally, inflight, window, warmup, drain
        )
        await tally.close([c for group in groups for c in group], timeout)
    finally:
        tally.abort_all()
    return {
        "figures": {**relay_figures(run, delivered, usage), **_redis_figures(usage, delivered)},
        "generator_cpu_pct": usage["generator_cpu_pct"],
        "server_cpu_pct": usage["server_cpu_pct"],
    }


async def cluster_storm(
    cluster: Cluster, tally: Tally, clients: int, timeout: float = 60.0
) -> dict[str, Any]:
    """``clients`` connect at once, alternately to each process, and join
    rooms of two that span both: seconds until every ``joined`` and
    ``new-client`` arrived."""
    try:
        ports = cluster.ports
        rooms = Rooms(tally, clients, 2, "storm")
        greeted = dict.fromkeys(ports, 0)

        def join(client: WsClient) -> None:
            rooms.join(client, greeted[client.port])
            greeted[client.port] += 1

        def failed(task: asyncio.Future[Any]) -> None:
            if not task.cancelled() and task.exception() is not None:
                tally.error("connect", repr(task.exception()))

        meter = ClusterMeter(cluster)
        loop = asyncio.get_running_loop()
        started = loop.time()
        connects = []
        for first in range(0, clients, STORM_BATCH):
            for i in range(first, min(clients, first + STORM_BATCH)):
                task = start_connection(ports[i % len(ports)], tally, join)
                task.add_done_callback(failed)
                connects.append(task)
            await asyncio.sleep(0)
        try:
            await asyncio.wait_for(asyncio.shield(rooms.done), timeout)
        except TimeoutError:
            raise RuntimeError(
                f"after {timeout:g} s, {rooms.arrived} of {clients} clients had their id, "
                f"{rooms.joined} had joined and {rooms.new} new-client had arrived"
            ) from None
        finished = rooms.done.result()
        usage = meter.stop()
        await asyncio.wait(connects, timeout=timeout)
        rooms.verify()
        await tally.close(tally.clients, timeout)
    finally:
        tally.abort_all()
    redis = usage.get("redis_cpu_seconds")
    return {
        "figures": {
            "seconds": finished - started,
            "server_cpu_seconds": usage["server_cpu_seconds"],
            "server_cpu_us_per_client": per_message(usage["server_cpu_seconds"], clients),
            "redis_cpu_seconds": redis,
            "redis_cpu_us_per_client": None if redis is None else per_message(redis, clients),
        },
        "generator_cpu_pct": usage["generator_cpu_pct"],
        "server_cpu_pct": usage["server_cpu_pct"],
    }


async def cluster_loss(
    cluster: Cluster, tally: Tally, pairs: int, settle: float, timeout: float = 60.0
) -> dict[str, Any]:
    """``pairs`` rooms split over two processes; after the cluster has run
    ``settle`` seconds, the first process is killed (SIGKILL): seconds until
    the first and the last member on the second heard ``leave-client``."""
    try:
        rooms, (doomed, survivors) = await _connect_split(cluster, tally, pairs, timeout)
        wait = cluster.started + settle - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        for client in doomed:
            client.closing = True  # losing these is the point
        left_before = rooms.left
        killed = time.perf_counter()
        await asyncio.to_thread(cluster.kill, 0)
        first = last = None
        deadline = killed + timeout
        while rooms.left - left_before < len(survivors):
            now = time.perf_counter()
            if first is None and rooms.left > left_before:
                first = now
            if now > deadline:
                raise RuntimeError(
                    f"after {timeout:g} s, {rooms.left - left_before} of {len(survivors)} "
                    "members had heard leave-client"
                )
            await asyncio.sleep(0.002)
        last = time.perf_counter()
        if first is None:
            first = last
        await tally.close(survivors, timeout)
    finally:
        tally.abort_all()
    return {
        "figures": {
            "first_leave_s": first - killed,
            "last_leave_s": last - killed,
            "settled_s": settle,
        },
    }


def start(name: str, params: dict[str, Any], args: Any) -> Cluster:
    """The servers scenario ``name`` runs against."""
    options = list(args.server_option or [])
    workers = 1
    if name == "cluster-relay":
        processes, with_redis, workers = SETUPS[params["setup"]]
    else:
        processes, with_redis = 2, True
    return Cluster(
        processes,
        args.redis if with_redis else None,
        options,
        args.pin,
        args.node_timeout,
        workers=workers,
    )


def summary(records: list[dict[str, Any]]) -> str:
    """Medians per setup and the ratios the targets are about."""
    lines: list[str] = []
    by_setup: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["scenario"] == "cluster-relay" and r["ok"]:
            by_setup.setdefault(r["params"]["setup"], []).append(r["figures"])

    def median(setup: str, key: str) -> float | None:
        values = [f[key] for f in by_setup.get(setup, []) if f.get(key) is not None]
        return statistics.median(values) if values else None

    for setup in SETUPS:
        cpu = median(setup, "server_cpu_us_per_msg")
        if cpu is None:
            continue
        redis = median(setup, "redis_cpu_us_per_msg")
        lines.append(
            f"{setup:6} median over {len(by_setup[setup])}: server {cpu:.1f} us CPU/msg"
            + ("" if redis is None else f" (+ Redis {redis:.1f})")
            + f", {median(setup, 'msgs_per_s') or 0:,.0f} msgs/s,"
            f" rtt p50 {median(setup, 'rtt_p50_us') or 0:,.0f} us"
        )
    split, local, plain = (median(s, "server_cpu_us_per_msg") for s in DEFAULT_SETUPS)
    if split and local:
        lines.append(f"split / local: {split / local:.2f}x (target: at most 1.8x)")
    if local and plain:
        lines.append(f"local with / without Redis: {100 * (local / plain - 1):+.1f}% (target: 5%)")
    workers_rate, plain_rate = median("workers", "msgs_per_s"), median("plain", "msgs_per_s")
    if workers_rate and plain_rate:
        lines.append(f"2 workers / 1 process, msgs/s: {workers_rate / plain_rate:.2f}x")
    return "\n".join(lines)


def plan(args: Any) -> list[tuple[str, dict[str, Any]]]:
    timing = {"window": args.duration, "warmup": args.warmup}
    steps: list[tuple[str, dict[str, Any]]] = []
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(setups) - set(SETUPS)
    if unknown:
        raise SystemExit(f"bench: unknown setups {sorted(unknown)}; known: {', '.join(SETUPS)}")
    for _ in range(args.rounds):  # interleaved: one of each setup per round
        for setup in setups:
            steps.append(
                (
                    "cluster-relay",
                    {"setup": setup, "pairs": args.pairs, "inflight": args.window, **timing},
                )
            )
    if args.storm_clients:
        steps += [("cluster-storm", {"clients": args.storm_clients})] * args.rounds
    if args.losses:
        timeout = args.node_timeout or 5.0
        settle = 2 * timeout + timeout / 5 + 0.5
        steps += [("cluster-loss", {"pairs": args.loss_pairs, "settle": settle})] * args.losses
    return steps
