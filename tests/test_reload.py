"""CertificateReloader: polling the certificate files on an injected clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.ssl import TLSVersion
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from signaling.ops.reload import CertificateReloader
from signaling.wire.tls import ReloadableServerTLS

from .certs import CertificateAuthority

INTERVAL = 10.0


@pytest.fixture
def live(tmp_path: Path, ca: CertificateAuthority) -> Path:
    ca.write_server(tmp_path / "live", "first")
    return tmp_path / "live"


@pytest.fixture
def tls(live: Path) -> ReloadableServerTLS:
    return ReloadableServerTLS(
        str(live / "fullchain.pem"), str(live / "privkey.pem"), TLSVersion.TLSv1_2
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reloader(tls: ReloadableServerTLS, clock: Clock) -> Iterator[CertificateReloader]:
    service = CertificateReloader(tls, INTERVAL, clock)
    service.startService()
    yield service
    if service.running:
        service.stopService()


def serving(tls: ReloadableServerTLS) -> str:
    return tls.current.certificate.subject.rfc4514_string()


def reload_errors(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        e
        for e in events
        if e.get("log_namespace") == "signaling.wire.tls" and e["log_level"] == LogLevel.error
    ]


def test_a_renewal_is_picked_up_at_the_next_poll(
    ca: CertificateAuthority, live: Path, tls: ReloadableServerTLS, clock: Clock, reloader: Any
) -> None:
    ca.write_server(live, "second")
    clock.advance(INTERVAL - 1)
    assert serving(tls) == "CN=first"
    clock.advance(1)
    assert serving(tls) == "CN=second"


def test_unchanged_files_are_not_reloaded(
    tls: ReloadableServerTLS, clock: Clock, reloader: Any
) -> None:
    before = tls.current
    clock.pump([INTERVAL] * 5)
    assert tls.current is before


def test_broken_files_log_once_and_keep_the_old_certificate(
    ca: CertificateAuthority,
    live: Path,
    tls: ReloadableServerTLS,
    clock: Clock,
    reloader: Any,
    events: list[dict[str, Any]],
) -> None:
    (live / "fullchain.pem").write_bytes(ca.server("half-renewed").pem)  # key not yet replaced
    clock.pump([INTERVAL] * 3)
    assert serving(tls) == "CN=first"
    [error] = reload_errors(events)
    assert "does not match" in error["error"]
    ca.write_server(live, "second")
    clock.advance(INTERVAL)
    assert serving(tls) == "CN=second"
    assert len(reload_errors(events)) == 1


def test_no_polling_with_interval_zero(
    ca: CertificateAuthority, live: Path, tls: ReloadableServerTLS, clock: Clock
) -> None:
    service = CertificateReloader(tls, 0, clock)
    service.startService()
    ca.write_server(live, "second")
    clock.pump([INTERVAL] * 3)
    assert serving(tls) == "CN=first"
    assert not clock.getDelayedCalls()
    service.stopService()


def test_stopping_stops_the_polls(
    ca: CertificateAuthority, live: Path, tls: ReloadableServerTLS, clock: Clock, reloader: Any
) -> None:
    reloader.stopService()
    assert not clock.getDelayedCalls()
    ca.write_server(live, "second")
    clock.advance(INTERVAL)
    assert serving(tls) == "CN=first"


def test_without_tls_nothing_is_polled(clock: Clock) -> None:
    service = CertificateReloader(None, INTERVAL, clock)
    service.startService()
    assert not clock.getDelayedCalls()
    service.stopService()
