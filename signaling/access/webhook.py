"""The webhook gate: an HTTP service of the application decides on each join
(``--auth-webhook``) and hears of each leave (``--disconnect-webhook``).

On ``join`` the gate POSTs ``{"room_id", "client_id", "remote_address",
"token", "metadata"}`` as JSON and reads ``{"allowed": bool, "reason"?,
"ice_servers"?, "sub"?, "name"?, "metadata"?}`` back: allowed, the join goes
on with the identity and ICE servers of the reply; refused, the client gets
``unauthorized`` with the reason and is closed (4001). An answer that is not
a 2xx with such an object, or none within the timeout, refuses the join with
``unavailable`` and leaves the connection open, to try again. A leave is
POSTed as ``{"room_id", "client_id", "event": "left"}``, and not waited for.

Requests go through one treq client over a pool of persistent connections;
at most ``max_pending`` of each kind are in flight (joins past it get
``unavailable`` at once, notices past it are dropped). Failures are counted
in ``Stats.webhook_failures`` and logged within the hub's log budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import treq
from twisted.internet import error as internet_error
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH

from signaling.core.access import (
    OPEN,
    GateDone,
    Grant,
    JoinRequest,
    Unauthorized,
    identity_of,
    identity_problem,
)
from signaling.core.logbudget import EventLog, LogBudget, NullLog
from signaling.core.rooms import JoinRefused, RoomsUnavailable
from signaling.core.stats import Stats

#: The largest reply body read from a webhook (bytes).
MAX_REPLY = 64 * 1024
#: The longest refusal reason passed on to the client (characters).
MAX_REASON = 500
#: Idle connections kept open to each webhook host.
MAX_PERSISTENT_PER_HOST = 16
#: Seconds an idle pooled connection is kept (below common server keep-alive
#: timeouts, so that a request rarely meets a connection the server is closing).
IDLE_CONNECTION_TIMEOUT = 4

DENIED = "not allowed by the authorization service"
_HEADERS: dict[bytes | str, list[bytes | str]] = {"Content-Type": ["application/json"]}


class WebhookUnavailable(RoomsUnavailable):
    """The authorization service gave no usable answer: ``unavailable``,
    and the connection stays open to try again."""


class _Failed(Exception):
    """A webhook exchange that gave no usable answer: ``reason`` is the
    metric's label, ``text`` what the client is told, ``detail`` what the log adds."""

    def __init__(self, reason: str, text: str, detail: str = "") -> None:
        super().__init__(text)
        self.reason = reason
        self.text = text
        self.detail = detail


class _TooLarge(Exception):
    pass


def remote_address(address: str) -> str:
    """The session's address without its transport: ``tcp4:192.0.2.7:50412``
    -> ``192.0.2.7:50412``; ``tcp6:[2001:db8::7]:443`` -> ``[2001:db8::7]:443``;
    an address forwarded by a proxy (no transport) and ``unix`` as they are."""
    kind, sep, rest = address.partition(":")
    return rest if sep and kind in ("tcp4", "tcp6") else address


class _BoundedBody(Protocol):
    """Reads a response body of at most ``limit`` bytes into ``done``; a
    larger one fails with :class:`_TooLarge` and drops the connection."""

    def __init__(self, limit: int, length: Any) -> None:
        self.limit = limit
        self.length = length
        self.size = 0
        self.chunks: list[bytes] | None = []
        self.done: Deferred[bytes] = Deferred(lambda _: self._abort())

    def connectionMade(self) -> None:
        if self.length is not UNKNOWN_LENGTH and self.length > self.limit:
            self._too_large()

    def drop(self) -> None:
        """Nobody wants the body: drop the connection rather than read on
        (a body that never ends would hold it for good)."""
        self.chunks = None
        self.done.addErrback(lambda _: None)
        self._abort()

    def dataReceived(self, data: bytes) -> None:
        if self.done.called:
            return
        self.size += len(data)
        if self.size > self.limit:
            self._too_large()
        elif self.chunks is not None:
            self.chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(b"".join(self.chunks or ()))
        else:
            self.done.errback(reason)

    def _too_large(self) -> None:
        self._abort()
        if not self.done.called:
            self.done.errback(_TooLarge())

    def _abort(self) -> None:
        transport: Any = self.transport  # the response's IPushProducer
        if transport is not None:
            transport.stopProducing()  # drops the connection


class WebhookGate:
    """A :class:`~signaling.core.access.Gate` asking ``auth_url`` about each
    join (None: every join is let through) and telling ``disconnect_url`` of
    each leave (None: nobody is told), each within ``timeout`` seconds."""

    def __init__(
        self,
        reactor: Any,
        auth_url: str | None = None,
        disconnect_url: str | None = None,
        timeout: float = 5.0,
        max_pending: int = 1000,
        stats: Stats | None = None,
        log: EventLog | None = None,
        log_budget: LogBudget | None = None,
        clock: Any = None,
    ) -> None:
        self.reactor = reactor
        #: Times the timeouts (``reactor`` unless given).
        self.clock = clock if clock is not None else reactor
        self.auth_url = auth_url
        self.disconnect_url = disconnect_url
        self.timeout = timeout
        self.max_pending = max_pending
        self.stats = stats if stats is not None else Stats()
        self.log: EventLog = log if log is not None else NullLog()
        self.log_budget = (
            log_budget if log_budget is not None else LogBudget(self.clock, 0, self.log)
        )
        #: Auth calls and leave notices in flight.
        self.pending_auth = 0
        self.pending_notices = 0
        #: Fired when no leave notice is in flight (``close`` waits for them).
        self._quiet: list[Deferred[None]] = []
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = MAX_PERSISTENT_PER_HOST
        self.pool.cachedConnectionTimeout = IDLE_CONNECTION_TIMEOUT
        self.client = treq.client.HTTPClient(Agent(reactor, pool=self.pool, connectTimeout=timeout))

    # -- the Gate protocol ---------------------------------------------------------

    def check(self, request: JoinRequest, done: GateDone) -> None:
        url = self.auth_url
        if url is None:
            done(OPEN)
            return
        if self.pending_auth >= self.max_pending:
            failed = _Failed(
                "overloaded",
                "too many joins are waiting for the authorization service",
                f"{self.pending_auth} in flight",
            )
            done(self._auth_failed(Failure(failed)))
            return
        self.pending_auth += 1
        body = {
            "room_id": request.room_id,
            "client_id": request.client_id,
            "remote_address": remote_address(request.address),
            "token": request.token,
            "metadata": request.metadata,
        }

        def answered(outcome: Grant | JoinRefused) -> None:
            self.pending_auth -= 1
            done(outcome)

        d: Deferred[Any] = self._post(url, body)
        d.addCallback(self._decision)
        d.addErrback(self._auth_failed)
        d.addCallback(answered)
        d.addErrback(self._unexpected, "auth")

    def left(self, room_id: str, client_id: str) -> None:
        url = self.disconnect_url
        if url is None:
            return
        if self.pending_notices >= self.max_pending:
            self._count_failure(
                "disconnect",
                _Failed("dropped", "too many leave notices in flight; this one was dropped"),
            )
            return
        self.pending_notices += 1
        d = self._post(url, {"room_id": room_id, "client_id": client_id, "event": "left"})

        def finished(result: object) -> object:
            self.pending_notices -= 1
            if not self.pending_notices:
                quiet, self._quiet = self._quiet, []
                for waiter in quiet:
                    waiter.callback(None)
            return result

        d.addBoth(finished)
        d.addErrback(lambda failure: self._count_failure("disconnect", self._failed(failure)))
        d.addErrback(self._unexpected, "disconnect")

    # -- the exchange --------------------------------------------------------------

    def _post(self, url: str, body: Mapping[str, Any]) -> Deferred[bytes]:
        """The body of a 2xx answer to ``body`` POSTed to ``url`` within the timeout."""
        d = Deferred.fromCoroutine(self._exchange(url, orjson.dumps(body)))
        # Whatever the cancelled request fails with, it is a timeout.
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=self._timed_out)
        return d

    def _timed_out(self, result: object, timeout: float) -> None:
        raise _Failed(
            "timeout",
            "the authorization service did not answer in time",
            f"no answer within {timeout:g} seconds",
        )

    async def _exchange(self, url: str, body: bytes) -> bytes:
        response = await self.client.post(
            url, data=body, headers=_HEADERS, allow_redirects=False, unbuffered=True
        )
        reader = _BoundedBody(MAX_REPLY, response.length)
        response.deliverBody(reader)
        if not 200 <= response.code < 300:
            reader.drop()
            raise _Failed("status", f"the authorization service answered {response.code}")
        return await reader.done

    def _decision(self, body: bytes) -> Grant | JoinRefused:
        """What a 2xx reply to an auth call says."""
        try:
            reply = orjson.loads(body)
        except orjson.JSONDecodeError as e:
            return self._auth_failed(
                Failure(_Failed("invalid", "the authorization service's reply is not JSON", str(e)))
            )
        if not isinstance(reply, dict) or not isinstance(reply.get("allowed"), bool):
            return self._auth_failed(
                Failure(
                    _Failed(
                        "invalid",
                        "the authorization service's reply is not an object "
                        "with a boolean 'allowed'",
                        repr(body[:200]),
                    )
                )
            )
        if not reply["allowed"]:
            reason = reply.get("reason")
            if not isinstance(reason, str) or not reason.strip():
                reason = DENIED
            return Unauthorized(reason[:MAX_REASON])
        ice_servers = reply.get("ice_servers")
        if ice_servers is not None and not (
            isinstance(ice_servers, list) and all(isinstance(s, dict) for s in ice_servers)
        ):
            if self.log_budget.allow("auth-webhook-ice-servers"):
                self.log.warn(
                    "auth webhook: ice_servers ignored: not a list of objects: {value!r}",
                    value=ice_servers,
                )
            ice_servers = None
        identity = identity_of(reply)
        problem = identity_problem(identity)
        if problem is not None:
            return self._auth_failed(
                Failure(
                    _Failed(
                        "invalid",
                        "the authorization service's reply has an invalid identity",
                        problem,
                    )
                )
            )
        return Grant(identity=identity, ice_servers=ice_servers)

    # -- failures ------------------------------------------------------------------

    def _failed(self, failure: Failure) -> _Failed:
        """What went wrong in an exchange, for the log, the metric and the client."""
        if failure.check(_Failed):
            return failure.value  # type: ignore[return-value]
        if failure.check(internet_error.TimeoutError):  # connecting took too long
            return _Failed(
                "timeout",
                "the authorization service did not answer in time",
                f"no connection within {self.timeout:g} seconds",
            )
        if failure.check(_TooLarge):
            return _Failed(
                "invalid", f"the authorization service's reply is larger than {MAX_REPLY} bytes"
            )
        if failure.check(
            internet_error.ConnectError,
            internet_error.DNSLookupError,
            ResponseNeverReceived,
            ResponseFailed,
            RequestTransmissionFailed,
        ):
            return _Failed(
                "unreachable",
                "the authorization service cannot be reached",
                failure.getErrorMessage() or repr(failure.value),
            )
        return _Failed(
            "error",
            "the authorization service cannot be reached",
            repr(failure.value),
        )

    def _auth_failed(self, failure: Failure) -> JoinRefused:
        failed = self._failed(failure)
        self._count_failure("auth", failed)
        return WebhookUnavailable(failed.text)

    def _count_failure(self, webhook: str, failed: _Failed) -> None:
        self.stats.webhook_failures[webhook, failed.reason] += 1
        if self.log_budget.allow(f"{webhook}-webhook-{failed.reason}"):
            self.log.warn(
                "{webhook} webhook failed ({reason}): {text}{detail}",
                webhook=webhook,
                reason=failed.reason,
                text=failed.text,
                detail=f" ({failed.detail})" if failed.detail else "",
            )

    def _unexpected(self, failure: Failure, webhook: str) -> None:
        """A bug past the exchange (in the session's callback, say): logged, not lost."""
        self.log.warn(
            "{webhook} webhook: unexpected error: {error}",
            webhook=webhook,
            error=failure.getTraceback(),
        )

    def close(self) -> Deferred[None]:
        """At shutdown: let the leave notices in flight finish (each within
        the timeout), then close the idle connections."""
        if not self.pending_notices:
            return self.pool.closeCachedConnections()
        quiet: Deferred[None] = Deferred()
        self._quiet.append(quiet)
        return quiet.addCallback(lambda _: self.pool.closeCachedConnections())
