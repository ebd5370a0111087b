"""/healthz, /metrics and JSON logs reflect exactly what happened."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel

from signaling import __version__
from signaling.logs import json_observer
from signaling.web.site import build_metrics_site, listening_factory
from signaling.wire.protocol import SignalingFactory

from .conftest import on_reactor, wait_for


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, headers, body = get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_healthz_reports_state_and_draining(make_server) -> None:
    clock = Clock()
    clock.advance(1000)
    server = make_server(clock=clock, join_timeout=0)  # c stays out of a room
    a, b, c = server.client(), server.client(), server.client()
    a.join("one")
    b.join("two")
    on_reactor(clock.advance, 42.5)
    status, headers, body = get(f"http://127.0.0.1:{server.port}/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == {
        "status": "ok",
        "uptime": 42.5,
        "rooms": 2,
        "clients": 3,
        "version": __version__,
    }
    c.close()
    on_reactor(setattr, server.hub, "draining", True)
    status, _, body = get(f"http://127.0.0.1:{server.port}/healthz")
    assert status == 503
    assert json.loads(body)["status"] == "draining"


def test_metrics_follow_a_known_sequence(make_server) -> None:
    server = make_server()
    sent = []

    def send(client, kind, payload) -> None:
        frame = json.dumps({"type": kind, "payload": payload})
        sent.append(frame)
        client.send_raw(frame)

    a, b, c = server.client(), server.client(), server.client()
    send(a, "join", {"room_id": "one"})
    a.expect("joined")
    send(b, "join", {"room_id": "one"})
    b.expect("joined")
    a.expect("new-client")
    send(c, "join", {"room_id": "two"})
    c.expect("joined")
    send(a, "offer", {"client_id": b.id, "sdp": "o"})
    b.expect("offer")
    send(b, "answer", {"client_id": a.id, "sdp": "a"})
    a.expect("answer")
    send(a, "candidate", {"client_id": b.id, "candidate": {"candidate": "c"}})
    b.expect("candidate")
    send(a, "offer", {"client_id": c.id, "sdp": "o"})  # another room
    a.expect_error("unknown_client")
    sent.append("not json")
    a.send_raw("not json")
    a.expect_error("invalid_json")
    send(c, "leave", {})
    assert wait_for(lambda: server.rooms() == {"one": {a.id, b.id}})

    m = scrape(server.port)
    assert m[("signaling_connections_open", ())] == 3
    assert m[("signaling_connections_total", ())] == 3
    assert m[("signaling_rooms", ())] == 1
    assert m[("signaling_clients", ())] == 2
    received = {
        labels[0][1]: value
        for (name, labels), value in m.items()
        if name == "signaling_messages_received_total"
    }
    assert received == {
        "join": 3,
        "offer": 2,
        "answer": 1,
        "candidate": 1,
        "leave": 1,
        "invalid": 1,
    }
    relayed = {
        labels[0][1]: value
        for (name, labels), value in m.items()
        if name == "signaling_messages_relayed_total"
    }
    assert relayed == {"offer": 1, "answer": 1, "candidate": 1}
    assert m[("signaling_errors_total", (("code", "unknown_client"),))] == 1
    assert m[("signaling_errors_total", (("code", "invalid_json"),))] == 1
    assert m[("signaling_received_bytes_total", ())] == sum(len(f.encode()) for f in sent)
    assert m[("signaling_sent_bytes_total", ())] > 0
    assert m[("signaling_relay_latency_seconds_count", ())] == 3
    assert m[("signaling_relay_latency_seconds_bucket", (("le", "+Inf"),))] == 3
    assert 0 < m[("signaling_relay_latency_seconds_sum", ())] < 1
    assert m[("signaling_slow_consumers_dropped_total", ())] == 0
    assert m[("signaling_keepalive_timeouts_total", ())] == 0
    assert m[("process_resident_memory_bytes", ())] > 0


def test_metrics_on_their_own_listener(reactor_thread: Any) -> None:
    factory = SignalingFactory()
    main = on_reactor(
        reactor.listenTCP, 0, listening_factory(factory, serve_metrics=False), interface="127.0.0.1"
    )
    side = on_reactor(reactor.listenTCP, 0, build_metrics_site(factory), interface="127.0.0.1")
    try:
        assert get(f"http://127.0.0.1:{main.getHost().port}/metrics")[0] == 404
        assert scrape(side.getHost().port)[("signaling_connections_open", ())] == 0
        assert get(f"http://127.0.0.1:{side.getHost().port}/connect")[0] == 404
    finally:
        on_reactor(main.stopListening)
        on_reactor(side.stopListening)


def test_json_log_lines() -> None:
    out = io.BytesIO()
    observer = json_observer(out)
    log = Logger(namespace="signaling.wire.protocol", observer=observer)
    log.info("join {client_id} room={room_id}", client_id="abc", room_id="r1")
    try:
        raise ZeroDivisionError("division by zero")
    except ZeroDivisionError:
        log.failure("oops {what}", what=object())
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["message"] == "join abc room=r1"
    assert (first["client_id"], first["room_id"]) == ("abc", "r1")
    assert first["level"] == LogLevel.info.name
    assert first["namespace"] == "signaling.wire.protocol"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "critical"
    assert "ZeroDivisionError" in second["traceback"]
    assert second["what"].startswith("<object object")
