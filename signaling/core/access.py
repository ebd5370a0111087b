"""Who may join which room: the :class:`Gate` boundary a join passes before
the rooms see it, and what a gate answers.

A session asks its hub's gate (``Hub.gate``; None lets every join through
at no cost) with a :class:`JoinRequest` and hears back once, now or later,
through a callback: a :class:`Grant`, or a
:class:`~signaling.core.rooms.JoinRefused` (:class:`Unauthorized` closes the
connection with 4001; :class:`~signaling.core.rooms.RoomsUnavailable` leaves
it open, to try again). A grant may carry the member's identity, shown to
the other members in ``new-client`` and ``joined``; a bound on the room's
size; and the ICE servers the client is to use. Gates are chained with
:class:`Gates` (room tokens, then a webhook, say); the implementations are in
:mod:`signaling.access`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from signaling.core.messages import UNAUTHORIZED
from signaling.core.rooms import JoinRefused, tighter

#: Close code after ``unauthorized``: the application's own range (4000-4999).
CLOSE_UNAUTHORIZED = 4001

#: The identity fields a grant may show to peers, in this order.
IDENTITY_FIELDS = ("sub", "name", "metadata")
#: The most an identity may take, encoded as JSON: it goes out with every
#: ``new-client`` and ``joined`` of its room (and through Redis).
MAX_IDENTITY_BYTES = 4096


@dataclass(frozen=True, slots=True)
class JoinRequest:
    """A join as a gate sees it. ``token``: from the ``join`` payload, else
    from ``?token=`` on the connect URL; ``metadata``: the ``join``
    payload's ``metadata`` (any JSON value), if it had one."""

    room_id: str
    client_id: str
    address: str
    token: str | None = None
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class Grant:
    """A join let through. ``identity``: fields shown to the other members
    beside the client's id (a subset of :data:`IDENTITY_FIELDS`);
    ``max_room_size``: the room may not grow past it with this join (0: the
    server's bound alone); ``ice_servers``: given to the client in place of
    the server's, in ``RTCIceServer`` form."""

    identity: Mapping[str, Any] = field(default_factory=dict)
    max_room_size: int = 0
    ice_servers: Sequence[Mapping[str, Any]] | None = None

    def then(self, later: Grant) -> Grant:
        """This grant, with what ``later`` (a gate after this one) says over it."""
        return Grant(
            identity={**self.identity, **later.identity},
            max_room_size=tighter(self.max_room_size, later.max_room_size),
            ice_servers=later.ice_servers if later.ice_servers is not None else self.ice_servers,
        )


#: Let through, with nothing to add.
OPEN = Grant()


class Unauthorized(JoinRefused):
    """The join is not allowed: ``unauthorized``, then close 4001. The text
    says what the developer can fix ("token expired"), and nothing about
    other rooms."""

    code = UNAUTHORIZED


GateDone = Callable[["Grant | JoinRefused"], None]


class Gate(Protocol):
    """Decides on joins; told of leaves."""

    def check(self, request: JoinRequest, done: GateDone) -> None:
        """Call ``done`` once, now or later, with a :class:`Grant` or a
        :class:`~signaling.core.rooms.JoinRefused`."""

    def left(self, room_id: str, client_id: str) -> None:
        """``client_id``, let in by this gate, has left ``room_id`` (or its
        connection closed)."""


class Gates:
    """Gates asked in order; the first refusal ends the join, and the grants
    of all are combined (:meth:`Grant.then`)."""

    def __init__(self, gates: Sequence[Gate]) -> None:
        self.gates = list(gates)

    def check(self, request: JoinRequest, done: GateDone) -> None:
        self._ask(0, OPEN, request, done)

    def _ask(self, index: int, so_far: Grant, request: JoinRequest, done: GateDone) -> None:
        if index == len(self.gates):
            done(so_far)
            return

        def answered(outcome: Grant | JoinRefused) -> None:
            if isinstance(outcome, JoinRefused):
                done(outcome)
            else:
                self._ask(index + 1, so_far.then(outcome), request, done)

        self.gates[index].check(request, answered)

    def left(self, room_id: str, client_id: str) -> None:
        for gate in self.gates:
            gate.left(room_id, client_id)


def identity_problem(identity: Mapping[str, Any]) -> str | None:
    """Why ``identity`` cannot be shown to peers (None if it can): ``sub``
    and ``name`` must be strings, and the whole must encode as JSON (orjson:
    integers within 64 bits, nesting within its bound) in at most
    :data:`MAX_IDENTITY_BYTES`."""
    for name in ("sub", "name"):
        if name in identity and not isinstance(identity[name], str):
            return f"{name} must be a string"
    try:
        encoded = orjson.dumps(dict(identity))
    except (TypeError, orjson.JSONEncodeError) as e:
        return f"it cannot be encoded as JSON ({e})"
    if len(encoded) > MAX_IDENTITY_BYTES:
        return f"it takes {len(encoded)} bytes as JSON, more than {MAX_IDENTITY_BYTES}"
    return None


def identity_of(claims: Mapping[str, Any]) -> dict[str, Any]:
    """The identity fields present in ``claims`` (a token's, a webhook's reply)."""
    return {name: claims[name] for name in IDENTITY_FIELDS if claims.get(name) is not None}
