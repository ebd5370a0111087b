"""A client that stops reading cannot make the real server buffer without bound."""

from __future__ import annotations

import contextlib
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .conftest import Client
from .rawws import RawWebSocket

MIB = 1024 * 1024


def test_slow_reader_is_dropped_and_server_memory_stays_bounded(run_twistd) -> None:
    server = run_twistd(
        *("--interface", "127.0.0.1", "--port", "0"),
        *("--rate-limit", "0", "--max-send-buffer", str(MIB)),
    )
    url = f"ws://127.0.0.1:{server.port}/connect"
    clients = contextlib.ExitStack()

    def client() -> Client:
        ws = connect(url, proxy=None, max_size=None, open_timeout=5, close_timeout=1)
        return Client(clients.enter_context(ws))

    slow = RawWebSocket(server.port, rcvbuf=4096)
    slow.send("join", {"room_id": "room"})
    assert slow.recv_json()["type"] == "joined"  # and from now on it reads nothing
    flooder = client()
    flooder.join("room")
    x, y = client(), client()
    x.join("elsewhere")
    y.join("elsewhere")
    x.expect("new-client")

    baseline = server.rss_bytes()
    peak = baseline
    sdp = "v=0\r\n" + "a=candidate:0 1 UDP 2122252543 127.0.0.1 9 typ host\r\n" * 1000  # ~50 KB
    dropped = False
    sent = 0
    while sent < 4000 and not dropped:  # at most ~200 MB
        for _ in range(50):
            flooder.offer(slow.id, sdp)
        sent += 50
        peak = max(peak, server.rss_bytes())
        started = time.monotonic()
        x.offer(y.id, f"batch {sent}")  # the rest of the server is not held up
        assert y.expect("offer", timeout=2)["sdp"] == f"batch {sent}"
        assert time.monotonic() - started < 1
        try:
            while True:
                message = flooder.recv(timeout=0)
                if message["type"] == "leave-client":
                    assert message["payload"] == {"client_id": slow.id}
                    dropped = True
        except TimeoutError:
            pass
    assert dropped, f"sent {sent * len(sdp) // MIB} MiB to a non-reader and it was never dropped"
    assert peak - baseline < 40 * MIB, f"server grew by {(peak - baseline) // MIB} MiB"
    assert slow.is_closed_by_peer()
    x.offer(y.id, "after")
    assert y.expect("offer")["sdp"] == "after"
    with contextlib.suppress(ConnectionClosed):
        clients.close()
    print(f"dropped after {sent} messages; server grew {(peak - baseline) / MIB:.1f} MiB")
    assert "slow consumer" in server.stop()
