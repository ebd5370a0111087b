"""The command line: one command per scenario, and ``all``."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from . import cluster, report
from .crowd import churn, idle, storm
from .mesh import mesh
from .relay import relay
from .server import Server, can_pin, pin_generator, raise_open_files
from .twistd import ROOT
from .wsclient import Tally

DEFAULT_RESULTS = ROOT / "bench" / "results" / "results.jsonl"

Scenario = Callable[..., Awaitable[dict[str, Any]]]
SCENARIOS: dict[str, Scenario] = {
    "relay": relay,
    "storm": storm,
    "idle": idle,
    "mesh": mesh,
    "churn": churn,
    "cluster-relay": cluster.cluster_relay,
    "cluster-storm": cluster.cluster_storm,
    "cluster-loss": cluster.cluster_loss,
}


def _relay_params(a: argparse.Namespace) -> dict[str, Any]:
    return {"pairs": a.pairs, "inflight": a.window, "window": a.duration, "warmup": a.warmup}


def plan(args: argparse.Namespace) -> list[tuple[str, dict[str, Any]]]:
    """The scenarios to run, each with its parameters."""
    name = args.scenario
    if name == "relay":
        return [("relay", _relay_params(args))]
    if name == "storm":
        return [("storm", {"clients": args.clients, "room_size": args.room_size})]
    if name == "idle":
        return [("idle", {"clients": args.clients, "hold": args.hold})]
    if name == "mesh":
        return [("mesh", {"members": args.members, "interval": args.interval_ms / 1000})]
    if name == "churn":
        return [("churn", {"clients": args.clients, "batch": args.batch, **_relay_params(args)})]
    if name == "cluster":
        return cluster.plan(args)
    timing = {"window": args.duration, "warmup": args.warmup}
    return [
        ("relay", {"pairs": 1, "inflight": 1, **timing}),
        ("relay", {"pairs": 100, "inflight": 8, **timing}),
        ("relay", {"pairs": 1000, "inflight": 1, **timing}),
        ("storm", {"clients": 5000, "room_size": 2}),
        ("storm", {"clients": 2000, "room_size": 10}),
        ("idle", {"clients": 10000, "hold": args.hold}),
        ("mesh", {"members": 50, "interval": 0.005}),
        ("churn", {"clients": 20000, "batch": 500, "pairs": 100, "inflight": 8, **timing}),
    ]


def _bound(params: dict[str, Any], timeout: float) -> float:
    """How long a whole scenario may take before it counts as failed."""
    measuring = sum(params.get(key, 0) for key in ("window", "warmup", "hold", "settle"))
    return 2 * measuring + 3 * timeout + params.get("clients", 0) / 100


async def run_one(name: str, params: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Start a server, run one scenario against it (bounded), stop the server."""
    record: dict[str, Any] = {
        "scenario": name,
        "params": params,
        "ok": False,
        "failure": None,
        "figures": None,
        "generator_cpu_pct": None,
        "server_cpu_pct": None,
        "errors": 0,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    server_options = list(args.server_option or [])
    if name == "idle" and args.ping_interval is not None:
        server_options += ["--ping-interval", str(args.ping_interval)]
    record["server_options"] = server_options
    server: Server | cluster.Cluster
    if name.startswith("cluster-"):
        try:
            server = await asyncio.to_thread(cluster.start, name, params, args)
        except Exception as e:
            record["failure"] = f"{type(e).__name__}: {e}"
            return record
        record["servers"] = len(server.servers)
        record["redis_prefix"] = server.prefix if server.redis is not None else None
        record["redis_pid_visible"] = server.redis_pid is not None
    else:
        server = await asyncio.to_thread(Server, server_options, args.pin)
    bound = _bound(params, args.timeout)
    tally = Tally()
    try:
        scenario = SCENARIOS[name](server, tally, **params, timeout=args.timeout)
        assert isinstance(scenario, Coroutine)
        record.update(await asyncio.wait_for(scenario, bound))
        record["ok"] = True
    except TimeoutError:
        record["failure"] = (
            f"timed out (each phase may take {args.timeout:g} s, the scenario {bound:.0f} s)"
        )
    except Exception as e:
        record["failure"] = f"{type(e).__name__}: {e}"
    finally:
        record["errors"] = tally.total
        record["error_kinds"] = dict(tally.counts)
        record["error_examples"] = list(tally.examples)
        if not server.alive():
            record["ok"] = False
            record["failure"] = "the server exited:\n" + server.log_tail()
        elif record["failure"]:
            record["server_log_tail"] = server.log_tail()
        await asyncio.to_thread(server.stop)
    return record


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    records = []
    machine = report.machine()
    machine["loop"] = type(asyncio.get_running_loop()).__module__.split(".")[0]
    machine["pinned"] = args.pin
    for name, params in plan(args):
        described = " ".join(f"{k}={v}" for k, v in params.items())
        print(f"bench: {name} {described}", file=sys.stderr, flush=True)
        record = await run_one(name, params, args)
        record["machine"] = machine
        report.append(args.results, record)
        print(f"bench:   {report.headline(record)}", file=sys.stderr, flush=True)
        records.append(record)
    return records


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--results",
        type=Path,
        default=DEFAULT_RESULTS,
        help="append results as JSON lines to this file (default: %(default)s)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds any one phase (connecting, joining, draining) may take (default: 60)",
    )
    common.add_argument(
        "--no-pin",
        dest="pin",
        action="store_false",
        help="do not pin the server to core 0 and the generator to core 1",
    )
    common.add_argument(
        "--no-uvloop",
        dest="uvloop",
        action="store_false",
        help="use asyncio's own event loop even if uvloop is installed",
    )
    common.add_argument(
        "--server-option",
        action="append",
        metavar="OPTION",
        help="pass one more option to the server (repeat; e.g. --server-option=--max-room-size=60)",
    )

    relay_timing = argparse.ArgumentParser(add_help=False)
    relay_timing.add_argument(
        "--duration", type=float, default=5.0, help="seconds measured (default: 5)"
    )
    relay_timing.add_argument(
        "--warmup", type=float, default=2.0, help="seconds before measuring (default: 2)"
    )

    relay_shape = argparse.ArgumentParser(add_help=False)
    relay_shape.add_argument(
        "--pairs", type=int, default=100, help="pairs of clients, each in its own room"
    )
    relay_shape.add_argument("--window", type=int, default=8, help="offers in flight per pair")

    top = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmark the signaling server on 127.0.0.1."
    )
    sub = top.add_subparsers(dest="scenario", required=True)
    sub.add_parser(
        "relay",
        parents=[common, relay_shape, relay_timing],
        help="relayed messages a second and round-trip latency",
    )
    p = sub.add_parser("storm", parents=[common], help="many clients connect and join at once")
    p.add_argument("--clients", type=int, default=5000)
    p.add_argument("--room-size", type=int, default=2)
    p = sub.add_parser("idle", parents=[common], help="memory and CPU of idle joined connections")
    p.add_argument("--clients", type=int, default=10000)
    p.add_argument("--hold", type=float, default=30.0, help="seconds held (default: 30)")
    p.add_argument(
        "--ping-interval", type=float, help="server keepalive interval (default: the server's)"
    )
    p = sub.add_parser(
        "mesh", parents=[common], help="a full mesh of offers and answers in one room"
    )
    p.add_argument("--members", type=int, default=50)
    p.add_argument("--interval-ms", type=float, default=5.0, help="between joins (default: 5)")
    p = sub.add_parser(
        "churn",
        parents=[common, relay_shape, relay_timing],
        help="relay, many clients join and leave, relay again",
    )
    p.add_argument("--clients", type=int, default=20000, help="clients through join/leave")
    p.add_argument("--batch", type=int, default=500, help="clients connected at once")
    p = sub.add_parser("all", parents=[common, relay_timing], help="every scenario at full size")
    p.add_argument("--hold", type=float, default=30.0, help="idle: seconds held (default: 30)")
    p.set_defaults(ping_interval=None)
    p = sub.add_parser(
        "cluster",
        parents=[common, relay_shape, relay_timing],
        help="rooms shared through Redis: relay across processes, join storm, node loss",
    )
    p.add_argument(
        "--redis",
        default=cluster.DEFAULT_REDIS,
        metavar="URL",
        help="the Redis on this machine the servers share (default: %(default)s)",
    )
    p.add_argument(
        "--rounds", type=int, default=3, help="runs of each setup, interleaved (default: 3)"
    )
    p.add_argument(
        "--setups",
        default=",".join(cluster.DEFAULT_SETUPS),
        help="relay setups, of split (rooms across 2 processes), local (1 process with "
        "--redis), plain (1 process without), workers (--workers 2 --redis, not pinned) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--storm-clients",
        type=int,
        default=2000,
        help="join storm over 2 processes, rooms of 2 spanning both (0: none; default: 2000)",
    )
    p.add_argument(
        "--losses", type=int, default=3, help="node-loss measurements (0: none; default: 3)"
    )
    p.add_argument(
        "--loss-pairs", type=int, default=10, help="pairs split over the 2 processes (default: 10)"
    )
    p.add_argument(
        "--node-timeout",
        type=float,
        help="the servers' --node-timeout (default: the server's, 5 s)",
    )
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not hasattr(args, "ping_interval"):
        args.ping_interval = None
    raise_open_files()
    if args.pin and not can_pin():
        print("bench: cores 0 and 1 are not both available; not pinning", file=sys.stderr)
        args.pin = False
    if args.pin:
        pin_generator()
    runner: Callable[[Coroutine[Any, Any, list[dict[str, Any]]]], list[dict[str, Any]]]
    runner = asyncio.run
    if args.uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            runner = uvloop.run
    records = runner(run(args))
    print(report.table(records))
    if args.scenario == "cluster":
        print("\n" + cluster.summary(records))
    print(f"\nresults appended to {args.results}")
    return 0 if all(r["ok"] and not r["errors"] for r in records) else 1
