"""The benchmark in bench/: its WebSocket client, and every scenario at a tiny
size against the real twistd server, so that the benchmark keeps working."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from bench.sdp import SDP_BYTES, make_sdp, relayed
from bench.twistd import ROOT, source_env
from bench.wsclient import OP_PING, OP_PONG, OP_TEXT, Tally, WsClient, client_frame

from .redis_rooms import require_redis_rooms
from .redis_servers import redis_keys, require_shared

# -- the client, without a server ---------------------------------------------


def parse_client_frame(data: bytes) -> Frame:
    """Parse with the websockets library, as a server would (mask required)."""
    reader = StreamReader()
    reader.feed_data(data)
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as done:
        next(parser)
    assert reader.at_eof() or not reader.buffer
    return done.value.value


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536])
def test_client_frames_are_valid_masked_frames(size: int) -> None:
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    frame = parse_client_frame(client_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin
    assert frame.data == payload


def test_sdp_is_realistic_and_exact() -> None:
    sdp = make_sdp(seed=3)
    assert len(sdp.encode()) == SDP_BYTES
    assert sdp.startswith("v=0\r\n") and sdp.endswith("\r\n")
    assert any(ord(c) > 127 for c in sdp)
    assert make_sdp(seed=4) != sdp


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.aborted = False

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True


def server_frame(payload: bytes, opcode: int = OP_TEXT, fin: bool = True) -> bytes:
    return Frame(Opcode(opcode), payload, fin).serialize(mask=False)


async def open_fake_client() -> tuple[WsClient, FakeTransport, list[bytes]]:
    tally = Tally()
    client = WsClient(5000, tally)
    transport = FakeTransport()
    client.connection_made(transport)
    received: list[bytes] = []
    return client, transport, received


def test_parser_reassembles_frames_split_anywhere() -> None:
    async def scenario() -> None:
        client, transport, received = await open_fake_client()
        assert transport.written[0].startswith(b"GET /connect HTTP/1.1\r\n")
        key_accept = b"a6LnIbL7dV+o8kcqnYC7hHJ7m/w="
        big = relayed("offer", "A" * 22, make_sdp()) * 30  # > 65535 bytes
        stream = (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: "
            + key_accept
            + b"\r\n\r\n"
            + server_frame(b'{"type":"notify-client-id","payload":{"client_id":"me"}}')
            + server_frame(b"ping!", OP_PING)
            + server_frame(b"short")
            + server_frame(b"x" * 300)
            + server_frame(big[:1000], fin=False)
            + server_frame(big[1000:], 0x0)
        )
        for i in range(len(stream) - 70000):  # byte by byte, save the long tail
            client.data_received(stream[i : i + 1])
            if client.client_id and client.on_text != received.append:
                client.on_text = received.append
        client.data_received(stream[len(stream) - 70000 :])
        assert client.client_id == "me" and client.ready.done()
        assert received == [b"short", b"x" * 300, big]
        pong = parse_client_frame(transport.written[1])
        assert (pong.opcode, pong.data) == (Opcode(OP_PONG), b"ping!")
        assert client.pings == 1 and client.tally.total == 0

    asyncio.run(scenario())


def test_refused_handshake_fails_the_client() -> None:
    async def scenario() -> None:
        client, transport, _ = await open_fake_client()
        client.data_received(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")
        assert transport.aborted
        with pytest.raises(ConnectionError, match="503"):
            await client.ready

    asyncio.run(scenario())


def test_check_accepts_same_json_and_counts_wrong_sender() -> None:
    async def scenario() -> None:
        client, _, _ = await open_fake_client()
        sdp = make_sdp()
        expected = relayed("answer", "sender", sdp)
        reencoded = json.dumps(
            {"payload": {"sdp": sdp, "client_id": "sender"}, "type": "answer"}
        ).encode()
        assert reencoded != expected
        assert client.check(reencoded, expected)
        assert client.tally.total == 0
        assert not client.check(relayed("answer", "someone-else", sdp), expected)
        assert not client.check(relayed("answer", "sender", sdp[:-1] + "y"), expected)
        error = orjson.dumps({"type": "error", "payload": {"code": "rate_limited"}})
        assert not client.check(error, expected)
        assert client.tally.counts == {"unexpected answer": 2, "server error rate_limited": 1}

    asyncio.run(scenario())


# -- every scenario against the real server -----------------------------------


def run_bench(tmp_path: Path, *args: str, limit: float = 60) -> tuple[int, list[dict[str, Any]]]:
    results = tmp_path / "results.jsonl"
    started = time.monotonic()
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            args[0],
            "--timeout",
            "10",
            *args[1:],
            "--results",
            results,
        ],
        cwd=ROOT,
        env=source_env(),
        capture_output=True,
        text=True,
        timeout=limit,
        check=False,
    )
    assert time.monotonic() - started < limit
    assert "Traceback" not in process.stderr, process.stderr
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert records, process.stdout + process.stderr
    table = process.stdout
    for record in records:
        assert record["scenario"] in table
        assert record["machine"]["cores"] >= 1
        assert record["machine"]["autobahn_nvx_active"] in (True, False)
    return process.returncode, records


def only_clean(code: int, records: list[dict[str, Any]]) -> dict[str, Any]:
    [record] = records
    assert record["ok"], record
    assert record["errors"] == 0, record
    assert code == 0
    assert 0 <= record["generator_cpu_pct"] <= 110
    return dict(record["figures"])


#: Two pairs, two offers in flight each, half a second measured.
TINY_RELAY = ("--pairs", "2", "--window", "2", "--duration", "0.5", "--warmup", "0.2")


def test_relay(tmp_path: Path) -> None:
    figures = only_clean(*run_bench(tmp_path, "relay", *TINY_RELAY))
    assert figures["msgs_per_s"] > 200
    assert figures["round_trips"] * 2 <= figures["relayed"] + 4
    assert 0 < figures["rtt_p50_us"] <= figures["rtt_p90_us"] <= figures["rtt_p99_us"] < 5e6
    assert figures["server_cpu_us_per_msg"] > 0 and figures["generator_cpu_us_per_msg"] > 0


@pytest.mark.parametrize("room_size", [2, 10])
def test_storm(tmp_path: Path, room_size: int) -> None:
    figures = only_clean(
        *run_bench(tmp_path, "storm", "--clients", "20", "--room-size", str(room_size))
    )
    assert 0 < figures["seconds"] < 10


def test_idle(tmp_path: Path) -> None:
    figures = only_clean(
        *run_bench(tmp_path, "idle", "--clients", "20", "--hold", "1", "--ping-interval", "0.3")
    )
    assert figures["pings_answered"] >= 20
    assert figures["rss_joined_mb"] >= figures["rss_before_mb"] > 10
    assert 0.9 < figures["hold_s"] < 3


def test_mesh(tmp_path: Path) -> None:
    figures = only_clean(*run_bench(tmp_path, "mesh", "--members", "5"))
    assert figures["answers"] == 10
    assert figures["joins_seconds"] <= figures["seconds"] < 10
    # four intervals of 5 ms, give or take the loop's timer granularity
    assert figures["joins_seconds"] > 0.019


def test_churn(tmp_path: Path) -> None:
    figures = only_clean(
        *run_bench(
            tmp_path,
            "churn",
            "--clients",
            "50",
            "--batch",
            "20",
            "--pairs",
            "2",
            "--window",
            "1",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
        )
    )
    assert figures["msgs_per_s_before"] > 100 and figures["msgs_per_s_after"] > 100
    assert figures["churn_clients_per_s"] > 0


def test_refusals_and_losses_are_reported_as_errors(tmp_path: Path) -> None:
    code, [record] = run_bench(
        tmp_path,
        "relay",
        "--pairs",
        "1",
        "--window",
        "4",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
        "--server-option=--rate-burst=10",
        "--server-option=--rate-limit=5",
    )
    assert code == 1
    assert record["ok"] and record["errors"] > 0
    assert record["error_kinds"]["server error rate_limited"] > 0
    assert record["error_kinds"]["lost"] > 0


def test_refused_connections_are_counted_as_errors(tmp_path: Path) -> None:
    code, [record] = run_bench(
        tmp_path, "storm", "--clients", "20", "--server-option=--max-connections=5"
    )
    assert code == 1
    assert record["ok"] and record["figures"]["connected"] == 5
    assert record["error_kinds"] == {"connect": 15}
    assert "503" in record["error_examples"][0]


def test_a_scenario_that_cannot_finish_fails_in_bounded_time(tmp_path: Path) -> None:
    code, [record] = run_bench(
        tmp_path,
        "mesh",
        "--members",
        "5",
        "--server-option=--max-room-size=3",
        "--timeout",
        "1",
        limit=30,
    )
    assert code == 1
    assert not record["ok"]
    assert record["failure"].startswith("timed out")
    assert record["error_kinds"] == {"server error room_full": 2}


def test_cluster(tmp_path: Path) -> None:
    require_redis_rooms()
    require_shared()
    code, records = run_bench(
        tmp_path,
        "cluster",
        *TINY_RELAY,
        "--rounds",
        "1",
        "--storm-clients",
        "20",
        "--losses",
        "1",
        "--loss-pairs",
        "2",
        "--node-timeout",
        "1",
        limit=90,
    )
    assert code == 0
    assert [(r["scenario"], r["params"].get("setup")) for r in records] == [
        ("cluster-relay", "split"),
        ("cluster-relay", "local"),
        ("cluster-relay", "plain"),
        ("cluster-storm", None),
        ("cluster-loss", None),
    ]
    assert all(r["ok"] and r["errors"] == 0 for r in records), records
    split, local, plain, storm, loss = (r["figures"] for r in records)
    assert [r["servers"] for r in records] == [2, 1, 1, 2, 2]
    for figures in (split, local, plain):
        assert figures["msgs_per_s"] > 100
        assert 0 < figures["rtt_p50_us"] <= figures["rtt_p99_us"] < 5e6
        assert figures["server_cpu_us_per_msg"] > 0
    if records[0]["redis_pid_visible"]:  # Redis runs on this machine
        assert split["redis_cpu_us_per_msg"] > 0
    assert plain["redis_cpu_us_per_msg"] is None
    # 20 joins may take less CPU than the 10 ms ticks it is counted in
    assert 0 < storm["seconds"] < 10 and storm["server_cpu_seconds"] >= 0
    # a node is declared dead once its liveness key expires (1 s), seen at a
    # heartbeat (every 0.2 s)
    assert 0.5 < loss["first_leave_s"] <= loss["last_leave_s"] < 5
    for record in records:  # each run's keys were deleted after it
        if record["redis_prefix"]:
            assert not redis_keys(record["redis_prefix"])


def test_tokens_bench_measures_every_algorithm() -> None:
    from bench.tokens import measure

    figures = measure(joins=20, repeat=1)
    assert set(figures) == {"HS256", "ES256", "RS256"}
    assert all(0 < us < 100_000 for us in figures.values())
