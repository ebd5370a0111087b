"""--auth-webhook and --disconnect-webhook: a real HTTP service of the
application (twisted.web on 127.0.0.1, in the test's reactor thread) decides
on joins and hears of leaves, through the real twistd with real clients."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from websockets.sync.client import connect

from signaling.access.webhook import MAX_REPLY, WebhookGate, WebhookUnavailable, remote_address
from signaling.core.access import Grant, JoinRequest, Unauthorized
from signaling.core.stats import Stats
from signaling.ops.tap import Options

from .conftest import TIMEOUT, Client, on_reactor, wait_for
from .test_admission import metric

ROOT = Path(__file__).resolve().parent.parent

#: An answer that never comes (until the test ends).
HANG = object()


class Hook(Resource):
    """The application's webhooks: records each POST, answers what the test set
    (``answer(path, body) -> (status, reply)``, reply JSON-encoded unless bytes)."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.content_types: list[str | None] = []
        self.hanging: list[Request] = []
        self.cancelled = 0
        self.answer: Callable[[str, dict[str, Any]], tuple[int, Any]] = lambda path, body: (
            200,
            {"allowed": True},
        )
        self.port = 0

    def render_POST(self, request: Request) -> Any:
        path = request.path.decode()
        body = json.loads(request.content.read())
        self.requests.append((path, body))
        self.content_types.append(request.getHeader("content-type"))
        status, reply = self.answer(path, body)
        if reply is HANG:
            self.hanging.append(request)
            request.notifyFinish().addErrback(lambda _: self._cancelled())
            return NOT_DONE_YET
        request.setResponseCode(status)
        return reply if isinstance(reply, bytes) else json.dumps(reply).encode()

    def _cancelled(self) -> None:
        self.cancelled += 1

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return on_reactor(lambda: [body for p, body in self.requests if p == path])


@pytest.fixture
def hook(reactor_thread: Any) -> Iterator[Hook]:
    resource = Hook()
    port = on_reactor(reactor.listenTCP, 0, Site(resource), interface="127.0.0.1")
    resource.port = port.getHost().port
    yield resource

    def stop() -> Any:
        for request in resource.hanging:
            if not request.finished and not request._disconnected:
                request.finish()
        return port.stopListening()

    on_reactor(stop)


@pytest.fixture
def client() -> Iterator[Callable[..., Client]]:
    """Open real WebSocket clients to a port; closed after the test."""
    with contextlib.ExitStack() as stack:

        def open_client(port: int, query: str = "") -> Client:
            url = f"ws://127.0.0.1:{port}/connect{query}"
            ws = stack.enter_context(
                connect(url, open_timeout=TIMEOUT, close_timeout=1, proxy=None)
            )
            return Client(ws)

        yield open_client


def answering(**replies: Any) -> Callable[[str, dict[str, Any]], tuple[int, Any]]:
    """An answer by path: {"/auth": (status, reply)}, 204 for the rest."""
    return lambda path, body: replies.get(path.strip("/"), (204, b""))


# -- through the real server -----------------------------------------------------------


def test_an_allowed_join_carries_the_replys_identity_and_ice_servers(
    run_twistd: Any, hook: Hook, client: Callable[..., Client]
) -> None:
    ice = [{"urls": "turn:turn.example.com", "username": "u", "credential": "c"}]

    def answer(path: str, body: dict[str, Any]) -> tuple[int, Any]:
        return 200, {
            "allowed": True,
            "sub": f"user-{body['token']}",
            "metadata": {"role": "host" if body["token"] == "a" else "guest"},
            "ice_servers": ice,
        }

    hook.answer = answer
    port = run_twistd("--port", "0", "--auth-webhook", hook.url("/auth")).port
    a = client(port, "?token=a")
    a.send("join", {"room_id": "r", "metadata": {"seat": 1}})
    joined = a.expect("joined")
    assert joined["clients"] == [] and joined["members"] == []
    assert joined["ice_servers"] == ice
    b = client(port)
    b.send("join", {"room_id": "r", "token": "b"})
    joined = b.expect("joined")
    assert joined["clients"] == [a.id]
    assert joined["members"] == [{"client_id": a.id, "sub": "user-a", "metadata": {"role": "host"}}]
    assert a.expect("new-client") == {
        "client_id": b.id,
        "sub": "user-b",
        "metadata": {"role": "guest"},
    }
    first, second = hook.bodies("/auth")
    assert set(first) == {"room_id", "client_id", "remote_address", "token", "metadata"}
    assert first["room_id"] == "r" and first["client_id"] == a.id
    assert first["token"] == "a" and first["metadata"] == {"seat": 1}
    host, _, client_port = first["remote_address"].rpartition(":")
    assert host == "127.0.0.1" and client_port.isdigit()
    assert second["client_id"] == b.id and second["token"] == "b" and second["metadata"] is None
    assert hook.content_types == ["application/json"] * 2


def test_a_refused_join_is_unauthorized_with_the_replys_reason(
    run_twistd: Any, hook: Hook, client: Callable[..., Client]
) -> None:
    hook.answer = answering(auth=(200, {"allowed": False, "reason": "the room is closed"}))
    port = run_twistd("--port", "0", "--auth-webhook", hook.url("/auth")).port
    a = client(port)
    a.send("join", {"room_id": "r"})
    assert a.expect_error("unauthorized")["message"] == "the room is closed"
    assert a.expect_closed() == 4001
    hook.answer = answering(auth=(200, {"allowed": False}))
    b = client(port)
    b.send("join", {"room_id": "r"})
    assert b.expect_error("unauthorized")["message"] == "not allowed by the authorization service"
    assert b.expect_closed() == 4001


def test_no_answer_in_time_is_unavailable_and_the_connection_stays_open(
    run_twistd: Any, hook: Hook, client: Callable[..., Client]
) -> None:
    hook.answer = answering(auth=(200, HANG))
    server = run_twistd(
        "--port", "0", "--auth-webhook", hook.url("/auth"), "--webhook-timeout", "0.3"
    )
    a = client(server.port)
    a.send("join", {"room_id": "r"})
    error = a.expect_error("unavailable")
    assert error["message"] == "the authorization service did not answer in time"
    assert wait_for(lambda: on_reactor(lambda: hook.cancelled) == 1)  # the request was dropped
    hook.answer = answering(auth=(200, {"allowed": True}))
    assert a.join("r") == []
    server.wait_for(r"auth webhook failed \(timeout\)")


def test_unusable_answers_are_unavailable(
    run_twistd: Any, hook: Hook, client: Callable[..., Client]
) -> None:
    server = run_twistd("--port", "0", "--auth-webhook", hook.url("/auth"))
    a = client(server.port)
    for reply, message in [
        ((500, {"allowed": True}), "the authorization service answered 500"),
        ((403, {"allowed": True}), "the authorization service answered 403"),
        ((200, b"allowed"), "the authorization service's reply is not JSON"),
        (
            (200, [{"allowed": True}]),
            "the authorization service's reply is not an object with a boolean 'allowed'",
        ),
        (
            (200, {"allowed": "yes"}),
            "the authorization service's reply is not an object with a boolean 'allowed'",
        ),
    ]:
        hook.answer = answering(auth=reply)
        a.send("join", {"room_id": "r"})
        assert a.expect_error("unavailable")["message"] == message, reply
    hook.answer = answering(auth=(200, {"allowed": True}))
    assert a.join("r") == []
    assert (
        metric(server.port, "signaling_webhook_failures_total", 'reason="status",webhook="auth"')
        == 2
    )
    assert (
        metric(server.port, "signaling_webhook_failures_total", 'reason="invalid",webhook="auth"')
        == 3
    )


def test_joins_past_the_pending_bound_are_unavailable_at_once(
    run_twistd: Any, hook: Hook, client: Callable[..., Client]
) -> None:
    hook.answer = answering(auth=(200, HANG))
    server = run_twistd(
        "--port", "0", "--auth-webhook", hook.url("/auth"), "--webhook-max-pending", "1"
    )
    a = client(server.port)
    a.send("join", {"room_id": "r"})
    assert wait_for(lambda: len(hook.bodies("/auth")) == 1)
    b = client(server.port)
    b.send("join", {"room_id": "r"})
    error = b.expect_error("unavailable")
    assert error["message"] == "too many joins are waiting for the authorization service"
    assert len(hook.bodies("/auth")) == 1
    assert (
        metric(
            server.port, "signaling_webhook_failures_total", 'reason="overloaded",webhook="auth"'
        )
        == 1
    )


def test_the_disconnect_webhook_hears_of_leaves_and_closed_connections(
    run_twistd: Any, hook: Hook, client: Callable[..., Client]
) -> None:
    hook.answer = answering()
    port = run_twistd("--port", "0", "--disconnect-webhook", hook.url("/left")).port
    a, b = client(port), client(port)
    assert a.join("r") == []
    assert b.join("r") == [a.id]
    a.send("leave")
    assert wait_for(lambda: len(hook.bodies("/left")) == 1)
    b.close()
    assert wait_for(lambda: len(hook.bodies("/left")) == 2)
    assert hook.bodies("/left") == [
        {"room_id": "r", "client_id": a.id, "event": "left"},
        {"room_id": "r", "client_id": b.id, "event": "left"},
    ]
    assert hook.bodies("/auth") == []  # no auth webhook: joins are let in


def test_sigterm_waits_for_the_leave_notices_of_the_clients_it_closes(
    run_twistd: Any, hook: Hook, client: Callable[..., Client]
) -> None:
    hook.answer = answering(left=(200, HANG))
    server = run_twistd(
        "--port", "0", "--disconnect-webhook", hook.url("/left"), "--webhook-timeout", "20"
    )  # fmt: skip
    a = client(server.port)
    assert a.join("r") == []
    server.signal(signal.SIGTERM)
    assert wait_for(lambda: len(hook.bodies("/left")) == 1)
    time.sleep(0.5)
    assert server.alive()  # the notice is still on its way
    on_reactor(lambda: [request.finish() for request in hook.hanging])
    assert server.wait_exit() == 0
    assert hook.bodies("/left") == [{"room_id": "r", "client_id": a.id, "event": "left"}]


# -- the gate itself -----------------------------------------------------------------


def gate_answer(gate: WebhookGate, request: JoinRequest) -> list[Any]:
    """Ask ``gate`` in the reactor thread; the list gets its answer."""
    answers: list[Any] = []
    on_reactor(gate.check, request, answers.append)
    return answers


def test_timeouts_are_timed_by_the_clock_given(hook: Hook) -> None:
    hook.answer = answering(auth=(200, HANG))
    clock = Clock()
    gate = WebhookGate(reactor, auth_url=hook.url("/auth"), timeout=2, clock=clock)
    answers = gate_answer(gate, JoinRequest("r", "c", "tcp4:127.0.0.1:5"))
    assert wait_for(lambda: len(hook.bodies("/auth")) == 1)
    on_reactor(clock.advance, 1.9)
    assert answers == []
    on_reactor(clock.advance, 0.1)
    (answer,) = answers
    assert isinstance(answer, WebhookUnavailable)
    assert answer.text == "the authorization service did not answer in time"
    assert wait_for(lambda: on_reactor(lambda: hook.cancelled) == 1)
    assert gate.pending_auth == 0
    on_reactor(gate.close)


def test_a_refused_connection_or_an_oversized_reply_is_unavailable(hook: Hook) -> None:
    stats = Stats()
    unused = Hook()
    port = on_reactor(reactor.listenTCP, 0, Site(unused), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/auth"
    on_reactor(port.stopListening)
    gate = WebhookGate(reactor, auth_url=url, stats=stats)
    answers = gate_answer(gate, JoinRequest("r", "c", "unix"))
    assert wait_for(lambda: len(answers) == 1)
    assert isinstance(answers[0], WebhookUnavailable)
    assert answers[0].text == "the authorization service cannot be reached"
    assert stats.webhook_failures == {("auth", "unreachable"): 1}

    padding = "x" * MAX_REPLY
    hook.answer = answering(auth=(200, {"allowed": True, "metadata": padding}))
    gate = WebhookGate(reactor, auth_url=hook.url("/auth"), stats=stats)
    answers = gate_answer(gate, JoinRequest("r", "c", "unix"))
    assert wait_for(lambda: len(answers) == 1)
    assert isinstance(answers[0], WebhookUnavailable)
    assert answers[0].text == f"the authorization service's reply is larger than {MAX_REPLY} bytes"
    hook.answer = answering(auth=(200, {"allowed": True, "metadata": padding[:1000]}))
    answers = gate_answer(gate, JoinRequest("r", "c", "unix"))
    assert wait_for(lambda: len(answers) == 1)
    assert answers[0] == Grant(identity={"metadata": padding[:1000]})
    on_reactor(gate.close)


def test_a_reply_without_a_reason_or_with_odd_ice_servers(hook: Hook) -> None:
    gate = WebhookGate(reactor, auth_url=hook.url("/auth"))
    hook.answer = answering(auth=(200, {"allowed": True, "ice_servers": "stun:x", "name": "n"}))
    answers = gate_answer(gate, JoinRequest("r", "c", "unix"))
    assert wait_for(lambda: len(answers) == 1)
    assert answers[0] == Grant(identity={"name": "n"}, ice_servers=None)
    hook.answer = answering(auth=(200, {"allowed": False, "reason": "x" * 1000}))
    answers = gate_answer(gate, JoinRequest("r", "c", "unix"))
    assert wait_for(lambda: len(answers) == 1)
    assert isinstance(answers[0], Unauthorized) and answers[0].text == "x" * 500
    on_reactor(gate.close)


def test_leave_notices_past_the_pending_bound_are_dropped_and_counted(hook: Hook) -> None:
    hook.answer = answering(left=(200, HANG))
    stats = Stats()
    gate = WebhookGate(reactor, disconnect_url=hook.url("/left"), max_pending=1, stats=stats)
    answers = gate_answer(gate, JoinRequest("r", "a", "unix"))
    assert answers == [Grant()]  # no auth webhook
    on_reactor(gate.left, "r", "a")
    on_reactor(gate.left, "r", "b")
    assert wait_for(lambda: len(hook.bodies("/left")) == 1)
    assert stats.webhook_failures == {("disconnect", "dropped"): 1}
    assert hook.bodies("/left") == [{"room_id": "r", "client_id": "a", "event": "left"}]
    on_reactor(gate.close)


def test_remote_address_drops_the_transport() -> None:
    assert remote_address("tcp4:192.0.2.7:50412") == "192.0.2.7:50412"
    assert remote_address("tcp6:[2001:db8::7]:443") == "[2001:db8::7]:443"
    assert remote_address("198.51.100.7") == "198.51.100.7"
    assert remote_address("unix") == "unix"


# -- options and imports -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--auth-webhook", "ftp://example.com/auth"], "is not an http:// or https:// URL"),
        (["--disconnect-webhook", "example.com/left"], "is not an http:// or https:// URL"),
        (["--auth-webhook", "http:///auth"], "is not an http:// or https:// URL"),
        (["--auth-webhook", "http://x/a", "--webhook-timeout", "0"], "must be above 0"),
    ],
)
def test_bad_webhook_options_are_usage_errors(args: list[str], complaint: str) -> None:
    with pytest.raises(usage.UsageError, match=complaint):
        Options().parseOptions(["--port", "0", *args])


def test_a_server_without_webhooks_does_not_import_treq() -> None:
    script = (
        "import sys\n"
        "import signaling.ops.tap, signaling.web.site, signaling.wire.protocol\n"
        "print(sorted(m for m in sys.modules"
        " if m.startswith(('treq', 'signaling.access.webhook'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


class EndlessError(Resource):
    """Answers 500, then a body that never ends."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Any] = []
        self.disconnected = 0

    def render_POST(self, request: Any) -> Any:
        request.setResponseCode(500)
        request.write(b"upstream error ")
        self.requests.append(request)
        request.notifyFinish().addErrback(lambda _: self._gone())
        return NOT_DONE_YET

    def _gone(self) -> None:
        self.disconnected += 1


def test_an_error_reply_whose_body_never_ends_does_not_hold_its_connection(
    reactor_thread: Any,
) -> None:
    resource = EndlessError()
    port = on_reactor(reactor.listenTCP, 0, Site(resource), interface="127.0.0.1")
    url = f"http://127.0.0.1:{port.getHost().port}/auth"
    gate = WebhookGate(reactor, auth_url=url, timeout=0.3)
    try:
        answers = gate_answer(gate, JoinRequest("r", "c", "unix"))
        assert wait_for(lambda: len(answers) == 1)
        assert isinstance(answers[0], WebhookUnavailable)
        assert wait_for(lambda: on_reactor(lambda: resource.disconnected) == 1, 3)
        assert gate.pending_auth == 0
    finally:
        on_reactor(
            lambda: [r.finish() for r in resource.requests if not (r.finished or r._disconnected)]
        )
        on_reactor(port.stopListening)


@pytest.mark.parametrize(
    "reply",
    [
        {"allowed": True, "sub": 42},
        {"allowed": True, "name": {"first": "x"}},
        {"allowed": True, "metadata": "x" * 5000},
    ],
)
def test_an_identity_peers_could_not_be_sent_is_an_invalid_reply(
    hook: Hook, reply: dict[str, Any]
) -> None:
    gate = WebhookGate(reactor, auth_url=hook.url("/auth"))
    hook.answer = answering(auth=(200, reply))
    answers = gate_answer(gate, JoinRequest("r", "c", "unix"))
    assert wait_for(lambda: len(answers) == 1)
    assert isinstance(answers[0], WebhookUnavailable), answers[0]
    assert answers[0].text == "the authorization service's reply has an invalid identity"
    on_reactor(gate.close)
