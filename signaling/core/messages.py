"""The wire protocol: parsing client messages and encoding server messages.

Every frame is a JSON object ``{"type": ..., "payload": {...}}``.  Parsing is
strict and total: :func:`parse` either returns one of :class:`Join`,
:class:`Leave` or :class:`Relay`, or raises :class:`ProtocolError` carrying a
stable error code.  Nothing here knows about sockets or Twisted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# Stable error codes sent in ``error`` messages (documented in README.rst).
INVALID_JSON = "invalid_json"
INVALID_MESSAGE = "invalid_message"
UNKNOWN_TYPE = "unknown_type"
INVALID_ROOM_ID = "invalid_room_id"
NOT_IN_ROOM = "not_in_room"
ALREADY_IN_ROOM = "already_in_room"
UNKNOWN_CLIENT = "unknown_client"
UNSUPPORTED_FRAME = "unsupported_frame"
ROOM_FULL = "room_full"
TOO_MANY_ROOMS = "too_many_rooms"
RATE_LIMITED = "rate_limited"
JOIN_TIMEOUT = "join_timeout"
UNAVAILABLE = "unavailable"
UNAUTHORIZED = "unauthorized"
RESUME_FAILED = "resume_failed"

ERROR_CODES = frozenset(
    {
        INVALID_JSON,
        INVALID_MESSAGE,
        UNKNOWN_TYPE,
        INVALID_ROOM_ID,
        NOT_IN_ROOM,
        ALREADY_IN_ROOM,
        UNKNOWN_CLIENT,
        UNSUPPORTED_FRAME,
        ROOM_FULL,
        TOO_MANY_ROOMS,
        RATE_LIMITED,
        JOIN_TIMEOUT,
        UNAVAILABLE,
        UNAUTHORIZED,
        RESUME_FAILED,
    }
)

DEFAULT_MAX_ROOM_ID_LENGTH = 256

#: How deeply a ``candidate`` object may nest (orjson encodes at most ~254).
MAX_CANDIDATE_DEPTH = 32

#: Relayed message types and the payload field each one carries.
RELAY_FIELDS = {"offer": "sdp", "answer": "sdp", "candidate": "candidate"}


class NotUtf8(ValueError):
    """A text frame's bytes are not UTF-8 (the connection must close with 1007)."""


class ProtocolError(Exception):
    """A client message was rejected; ``code`` is one of :data:`ERROR_CODES`."""

    def __init__(self, code: str, message: str, in_reply_to: str | None = None):
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.in_reply_to = in_reply_to


@dataclass(frozen=True, slots=True)
class Join:
    """``join {room_id, token?, metadata?}``: enter a room, creating it if
    needed. ``token`` and ``metadata`` are for the server's access control."""

    room_id: str
    token: str | None = None
    metadata: Any = None


@dataclass(frozen=True, slots=True)
class Leave:
    """``leave {}``: leave the current room but keep the connection."""


@dataclass(frozen=True, slots=True)
class Relay:
    """``offer``/``answer``/``candidate``: forward ``body`` to ``target``."""

    type: str
    target: str
    body: Any


ClientMessage = Join | Leave | Relay

_LEAVE = Leave()


def parse(data: bytes | str, max_room_id_length: int = DEFAULT_MAX_ROOM_ID_LENGTH) -> ClientMessage:
    """Parse and validate one client frame.

    Raises :class:`NotUtf8` for bytes that are not UTF-8, which orjson
    checks as it parses, so frames need no separate validation.
    """
    try:
        decoded = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if type(data) is bytes:
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise NotUtf8() from None
        raise ProtocolError(INVALID_JSON, f"message is not valid JSON: {e}") from None
    if type(decoded) is not dict:
        raise ProtocolError(INVALID_MESSAGE, "message must be a JSON object")
    kind = decoded.get("type")
    if type(kind) is not str:
        raise ProtocolError(INVALID_MESSAGE, '"type" must be a string')
    payload = decoded.get("payload")

    field = RELAY_FIELDS.get(kind)
    if field is not None:
        if type(payload) is not dict:
            raise ProtocolError(INVALID_MESSAGE, '"payload" must be an object', kind)
        target = payload.get("client_id")
        if type(target) is not str:
            raise ProtocolError(INVALID_MESSAGE, '"payload.client_id" must be a string', kind)
        if field not in payload:
            raise ProtocolError(INVALID_MESSAGE, f'"payload.{field}" is missing', kind)
        body = payload[field]
        if field == "sdp":
            if type(body) is not str:
                raise ProtocolError(INVALID_MESSAGE, '"payload.sdp" must be a string', kind)
        elif body is not None and type(body) is not str:
            if type(body) is not dict:
                raise ProtocolError(
                    INVALID_MESSAGE,
                    '"payload.candidate" must be an object, a string or null',
                    kind,
                )
            if not _shallow(body, MAX_CANDIDATE_DEPTH):
                raise ProtocolError(
                    INVALID_MESSAGE,
                    f'"payload.candidate" nests deeper than {MAX_CANDIDATE_DEPTH} levels',
                    kind,
                )
        return Relay(kind, target, body)

    if kind == "join":
        if type(payload) is not dict:
            raise ProtocolError(INVALID_MESSAGE, '"payload" must be an object', kind)
        room_id = payload.get("room_id")
        if type(room_id) is not str or not room_id:
            raise ProtocolError(
                INVALID_ROOM_ID, '"payload.room_id" must be a non-empty string', kind
            )
        if len(room_id) > max_room_id_length:
            raise ProtocolError(
                INVALID_ROOM_ID,
                f'"payload.room_id" is longer than {max_room_id_length} characters',
                kind,
            )
        token = payload.get("token")
        if token is not None and type(token) is not str:
            raise ProtocolError(INVALID_MESSAGE, '"payload.token" must be a string', kind)
        metadata = payload.get("metadata")
        if token is None and metadata is None:
            return Join(room_id)
        if (type(metadata) is dict or type(metadata) is list) and not _shallow(
            metadata, MAX_CANDIDATE_DEPTH
        ):
            raise ProtocolError(
                INVALID_MESSAGE,
                f'"payload.metadata" nests deeper than {MAX_CANDIDATE_DEPTH} levels',
                kind,
            )
        return Join(room_id, token, metadata)

    if kind == "leave":
        if payload is not None and type(payload) is not dict:
            raise ProtocolError(INVALID_MESSAGE, '"payload" must be an object', kind)
        return _LEAVE

    raise ProtocolError(UNKNOWN_TYPE, f"unknown message type {kind!r}", kind)


def _shallow(value: Any, levels: int) -> bool:
    """True if containers in ``value`` nest at most ``levels`` deep."""
    if levels <= 0:
        return False
    items = value.values() if type(value) is dict else value
    for item in items:
        if (type(item) is dict or type(item) is list) and not _shallow(item, levels - 1):
            return False
    return True


def encode(kind: str, payload: dict[str, Any]) -> bytes:
    """Encode one server message as the bytes of a text frame."""
    return orjson.dumps({"type": kind, "payload": payload})


def notify_client_id(
    client_id: str, resume_token: str | None = None, resumed: bool | None = None
) -> bytes:
    """The client's id; with ``resume_token`` (``?resume=1``), and
    ``resumed`` when the client asked to resume."""
    if resume_token is None and resumed is None:
        return encode("notify-client-id", {"client_id": client_id})
    payload: dict[str, Any] = {"client_id": client_id}
    if resume_token is not None:
        payload["resume_token"] = resume_token
    if resumed is not None:
        payload["resumed"] = resumed
    return encode("notify-client-id", payload)


def new_client(client_id: str, identity: Mapping[str, Any] | None = None) -> bytes:
    """A member joined; ``identity`` (sub, name, metadata) beside its id."""
    if identity:
        return encode("new-client", {"client_id": client_id, **identity})
    return encode("new-client", {"client_id": client_id})


def leave_client(client_id: str) -> bytes:
    return encode("leave-client", {"client_id": client_id})


def joined(
    room_id: str,
    clients: list[str],
    identities: Mapping[str, Mapping[str, Any]] | None = None,
    ice_servers: Sequence[Mapping[str, Any]] | None = None,
) -> bytes:
    """The answer to a join: the members there before (``clients``, ids in
    join order). With ``identities`` (access control on), ``members`` lists
    them again with their identity fields; ``ice_servers`` is for the
    client's ``RTCPeerConnection``."""
    payload: dict[str, Any] = {"room_id": room_id, "clients": clients}
    if identities is not None:
        payload["members"] = [
            {"client_id": client_id, **identities.get(client_id, {})} for client_id in clients
        ]
    if ice_servers is not None:
        payload["ice_servers"] = ice_servers
    return encode("joined", payload)


def relayed(kind: str, sender: str, body: Any) -> bytes:
    """The frame a relay target receives: the sender's id stamped by us."""
    return encode(kind, {"client_id": sender, RELAY_FIELDS[kind]: body})


def server_message(text: str) -> bytes:
    """A notice from the server's operator (sent from the admin console)."""
    return encode("server-message", {"text": text})


def error(code: str, message: str, **details: Any) -> bytes:
    payload: dict[str, Any] = {"code": code, "message": message}
    payload.update(details)
    return encode("error", payload)
