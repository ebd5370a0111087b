"""Results: the machine they were measured on, JSON lines, and a short table."""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """What a reader needs to compare figures: CPU, versions, native speedups."""
    import autobahn.websocket as autobahn_websocket

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "autobahn": _version("autobahn"),
        "twisted": _version("twisted"),
        "orjson": _version("orjson"),
        "uvloop": _version("uvloop"),
        "autobahn_nvx_built": bool(getattr(autobahn_websocket, "HAS_NVX", False)),
        "autobahn_nvx_active": bool(getattr(autobahn_websocket, "USES_NVX", False)),
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def append(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as results:
        results.write(json.dumps(record, sort_keys=True) + "\n")


def headline(record: dict[str, Any]) -> str:
    """The one figure (or few) a scenario is about."""
    f = record.get("figures") or {}
    if not record["ok"]:
        return "FAILED: " + str(record["failure"])[:60]
    scenario = record["scenario"]
    if scenario == "relay":
        return (
            f"{f['msgs_per_s']:,.0f} msgs/s, rtt p50/p90/p99 "
            f"{f['rtt_p50_us']:,.0f}/{f['rtt_p90_us']:,.0f}/{f['rtt_p99_us']:,.0f} us, "
            f"server {f['server_cpu_us_per_msg'] or 0:.1f} us CPU/msg"
        )
    if scenario == "cluster-relay":
        redis = f["redis_cpu_us_per_msg"]
        return (
            f"{record['params']['setup']}: {f['msgs_per_s']:,.0f} msgs/s, rtt p50 "
            f"{f['rtt_p50_us']:,.0f} us, servers {f['server_cpu_us_per_msg'] or 0:.1f}"
            + ("" if redis is None else f" + Redis {redis:.1f}")
            + " us CPU/msg"
        )
    if scenario == "cluster-storm":
        redis = f["redis_cpu_seconds"]
        return f"{f['seconds']:.3f} s, servers {f['server_cpu_seconds']:.2f} s CPU" + (
            "" if redis is None else f", Redis {redis:.2f} s"
        )
    if scenario == "cluster-loss":
        return f"leave-client after {f['first_leave_s']:.2f} s (last {f['last_leave_s']:.2f} s)"
    if scenario in ("storm", "mesh"):
        return f"{f['seconds']:.3f} s, server {f['server_cpu_seconds']:.2f} s CPU"
    if scenario == "idle":
        return (
            f"{f['kb_per_connection']:.1f} KB/connection, "
            f"server {f['server_cpu_seconds']:.2f} s CPU in {f['hold_s']:.0f} s"
        )
    if scenario == "churn":
        return (
            f"{f['msgs_per_s_before']:,.0f} -> {f['msgs_per_s_after']:,.0f} msgs/s "
            f"({f['change_pct']:+.1f}%), server {f['server_cpu_us_per_msg_before'] or 0:.1f} -> "
            f"{f['server_cpu_us_per_msg_after'] or 0:.1f} us CPU/msg, "
            f"RSS {f['rss_before_churn_mb']:.0f} -> {f['rss_after_churn_mb']:.0f} MB"
        )
    return json.dumps(f)


def table(records: list[dict[str, Any]]) -> str:
    rows = [("scenario", "parameters", "result", "gen CPU", "srv CPU", "errors")]
    for r in records:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items())
        gen, srv = r.get("generator_cpu_pct"), r.get("server_cpu_pct")
        rows.append(
            (
                r["scenario"],
                params,
                headline(r),
                "-" if gen is None else f"{gen:.0f}%",
                "-" if srv is None else f"{srv:.0f}%",
                str(r["errors"]),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)
