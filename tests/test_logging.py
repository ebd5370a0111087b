"""Log events: connect, join, leave, disconnect (debug) and errors, never SDP at info."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent

from signaling.logs import LogBudget, ServerLogger, set_level

from .conftest import Client, RunningServer, wait_for

SECRET_SDP = "v=0\r\na=ice-pwd:do-not-log-this-secret\r\n"


def ours(events: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    return [
        e
        for e in list(events)
        if e.get("log_namespace") in ("signaling.wire.protocol", "signaling.core.session")
        and e.get("log_format", "").startswith(prefix)
    ]


def session(server: RunningServer, room: str) -> tuple[Client, Client]:
    """Two clients meet in ``room``, relay an offer, one errs and leaves."""
    a, b = server.client(), server.client()
    a.join(room)
    b.join(room)
    a.expect("new-client")
    a.offer(b.id, SECRET_SDP)
    b.expect("offer")
    a.send("dance", {})
    a.expect_error("unknown_type")
    a.close()
    b.expect("leave-client")
    return a, b


def test_lifecycle_events_carry_client_and_room(
    server: RunningServer, events: list[dict[str, Any]]
) -> None:
    a, b = session(server, "logged-room")

    assert wait_for(lambda: len(ours(events, "disconnect")) == 1)
    assert {e["client_id"] for e in ours(events, "connect")} == {a.id, b.id}
    assert {(e["client_id"], e["room_id"]) for e in ours(events, "join")} == {
        (a.id, "logged-room"),
        (b.id, "logged-room"),
    }
    assert [(e["client_id"], e["room_id"]) for e in ours(events, "leave")] == [
        (a.id, "logged-room")
    ]
    assert ours(events, "disconnect")[0]["client_id"] == a.id
    [error] = ours(events, "error")
    assert (error["client_id"], error["code"]) == (a.id, "unknown_type")

    joined = [formatEvent(e) for e in ours(events, "join")]
    assert all("room='logged-room'" in line for line in joined), joined

    for event in list(events):
        if event.get("log_level", LogLevel.debug) >= LogLevel.info:
            assert "do-not-log-this-secret" not in (formatEvent(event) + repr(event))


def test_room_ids_cannot_forge_log_lines(
    server: RunningServer, events: list[dict[str, Any]]
) -> None:
    a = server.client()
    a.join("r\n2026-01-01T00:00:00+0000 [signaling.wire.protocol#info] join forged")
    assert wait_for(lambda: len(ours(events, "join")) == 1)
    [line] = [formatEvent(e) for e in ours(events, "join")]
    assert "\n" not in line and "\\n" in line


def test_info_level_keeps_errors_and_drops_lifecycle(
    server: RunningServer, info_events: list[dict[str, Any]]
) -> None:
    session(server, "quiet-room")
    assert wait_for(lambda: ours(info_events, "error"))
    for prefix in ("connect", "join", "leave", "disconnect"):
        assert not ours(info_events, prefix), prefix


@pytest.mark.parametrize("level", [LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error])
def test_server_logger_drops_events_below_the_level(log_level: None, level: LogLevel) -> None:
    captured: list[dict[str, Any]] = []
    logger = ServerLogger(namespace="test", observer=captured.append)
    set_level(level)
    for each in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error):
        logger.emit(each, "at {name}", name=each.name)
    assert [e["log_level"] for e in captured] == [
        each
        for each in (LogLevel.debug, LogLevel.info, LogLevel.warn, LogLevel.error)
        if each >= level
    ]


def test_log_budget_leaves_out_the_excess_and_says_how_much(
    info_events: list[dict[str, Any]],
) -> None:
    clock = Clock()
    budget = LogBudget(clock, 3, ServerLogger())
    assert [budget.allow("error") for _ in range(10)] == [True] * 3 + [False] * 7
    assert budget.allow("failed handshake")  # each kind has its own budget
    assert not info_events
    clock.advance(60)
    [summary] = [formatEvent(e) for e in info_events]
    assert summary.startswith("7 more error events in the last minute were not logged")
    assert budget.allow("error")  # a new minute
    assert LogBudget(clock, 0, ServerLogger()).allow("error")  # 0: no budget
