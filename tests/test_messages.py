"""Direct unit tests of :mod:`signaling.core.messages` (parser and encoders)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from signaling.core import messages
from signaling.core.messages import (
    DEFAULT_MAX_ROOM_ID_LENGTH,
    ERROR_CODES,
    INVALID_JSON,
    INVALID_MESSAGE,
    INVALID_ROOM_ID,
    MAX_CANDIDATE_DEPTH,
    UNKNOWN_TYPE,
    Join,
    Leave,
    NotUtf8,
    ProtocolError,
    Relay,
    parse,
)

RELAY_KINDS = ("offer", "answer", "candidate")
SDP_KINDS = ("offer", "answer")
PAYLOAD_KINDS = ("join", *RELAY_KINDS)

SDP = (
    "v=0\r\n"
    "o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n"
    "s=Séance – 会议 🎥\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
)


def dumps(obj: Any) -> str:
    return json.dumps(obj)


def frame(kind: Any, payload: Any = None, **extra: Any) -> str:
    obj: dict[str, Any] = {"type": kind}
    if payload is not None:
        obj["payload"] = payload
    obj.update(extra)
    return json.dumps(obj)


def rejected(data: bytes | str, **kwargs: Any) -> ProtocolError:
    """Parse ``data`` expecting a ProtocolError and return it."""
    with pytest.raises(ProtocolError) as info:
        parse(data, **kwargs)
    err = info.value
    assert err.code in ERROR_CODES
    assert isinstance(err.message, str) and err.message
    return err


def as_bytes_and_str(text: str) -> list[bytes | str]:
    return [text, text.encode("utf-8")]


# --------------------------------------------------------------------------
# Valid messages
# --------------------------------------------------------------------------


@pytest.mark.parametrize("as_bytes", [False, True])
def test_join_parses(as_bytes: bool) -> None:
    data = frame("join", {"room_id": "room-1"})
    result = parse(data.encode() if as_bytes else data)
    assert result == Join("room-1")
    assert type(result) is Join


def test_join_non_ascii_room_id() -> None:
    assert parse(frame("join", {"room_id": "salle-été-会议-🎥"})) == Join("salle-été-会议-🎥")
    # Same thing with the non-ASCII characters sent raw (not \u-escaped).
    raw = json.dumps({"type": "join", "payload": {"room_id": "é🎥"}}, ensure_ascii=False)
    assert parse(raw.encode("utf-8")) == Join("é🎥")


@pytest.mark.parametrize(
    "data",
    [
        '{"type": "leave"}',
        '{"type": "leave", "payload": {}}',
        '{"type": "leave", "payload": null}',
        '{"type": "leave", "payload": {"room_id": "r", "junk": [1, 2]}}',
        '{"type": "leave", "payload": {}, "extra": true}',
    ],
)
def test_leave_parses(data: str) -> None:
    for d in as_bytes_and_str(data):
        result = parse(d)
        assert type(result) is Leave
        assert result == Leave()


@pytest.mark.parametrize("kind", SDP_KINDS)
@pytest.mark.parametrize("sdp", [SDP, "", "v=0\r\n", "ünïcødé \u2028 \x00 \r\n"])
def test_sdp_relay_parses(kind: str, sdp: str) -> None:
    for ensure_ascii in (True, False):
        text = json.dumps(
            {"type": kind, "payload": {"client_id": "peer-1", "sdp": sdp}},
            ensure_ascii=ensure_ascii,
        )
        for data in as_bytes_and_str(text):
            result = parse(data)
            assert type(result) is Relay
            assert result == Relay(kind, "peer-1", sdp)
            assert result.body == sdp  # \r\n and non-ASCII preserved exactly


@pytest.mark.parametrize(
    "candidate",
    [
        {
            "candidate": "candidate:842163049 1 udp 1677729535 1.2.3.4 3478 typ srflx",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": None,
        },
        {},
        {"nested": {"deeper": [1, 2.5, "x", None, True, {"k": "ü"}]}},
        "candidate:1 1 UDP 2122252543 192.168.1.2 54321 typ host",
        "",
        None,
    ],
    ids=["object", "empty-object", "nested-object", "string", "empty-string", "null"],
)
def test_candidate_relay_parses(candidate: Any) -> None:
    data = frame("candidate", {"client_id": "peer-2", "candidate": candidate})
    for d in as_bytes_and_str(data):
        result = parse(d)
        assert type(result) is Relay
        assert result == Relay("candidate", "peer-2", candidate)


def test_extra_fields_are_ignored() -> None:
    assert parse(frame("join", {"room_id": "r", "password": "x", "n": 1}, extra={"a": 1})) == Join(
        "r"
    )
    assert parse(
        frame("offer", {"client_id": "c", "sdp": "s", "candidate": 5, "room_id": 1})
    ) == Relay("offer", "c", "s")
    assert parse(frame("answer", {"client_id": "c", "sdp": "s", "type": "offer"}, x=[])) == Relay(
        "answer", "c", "s"
    )
    # "sdp" is ignored on a candidate, "candidate" is ignored on an offer.
    assert parse(frame("candidate", {"client_id": "c", "candidate": "cand", "sdp": 7})) == Relay(
        "candidate", "c", "cand"
    )


def test_relay_target_is_the_payload_client_id_verbatim() -> None:
    cid = "AbC_-123xyz"
    assert parse(frame("offer", {"client_id": cid, "sdp": "s"})).target == cid
    assert parse(frame("candidate", {"client_id": "", "candidate": None})) == Relay(
        "candidate", "", None
    )


# --------------------------------------------------------------------------
# Rejections
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        "",
        b"",
        "   ",
        "{",
        "{'type': 'join'}",
        '{"type": "join",}',
        '{"type": "leave"} trailing',
        "NaN",
        "undefined",
        b"\x00",
    ],
)
def test_not_json_is_invalid_json(data: bytes | str) -> None:
    err = rejected(data)
    assert err.code == INVALID_JSON
    assert err.in_reply_to is None


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b"\xc3\x28",
        b'{"type": "join", "payload": {"room_id": "\xff\xfe"}}',
        b'{"type": "offer", "payload": {"client_id": "a", "sdp": "\xed\xa0\x80"}}',
        b'{"type": "leave"\x80}',
    ],
)
def test_invalid_utf8_is_its_own_failure(data: bytes) -> None:
    """Not an error reply: the connection closes with 1007 (see test_protocol)."""
    with pytest.raises(NotUtf8):
        parse(data)


@pytest.mark.parametrize(
    "data", ["[]", '[{"type": "leave"}]', '"leave"', "0", "1.5", "-3", "null", "true"]
)
def test_json_that_is_not_an_object_is_invalid_message(data: str) -> None:
    for d in as_bytes_and_str(data):
        err = rejected(d)
        assert err.code == INVALID_MESSAGE
        assert err.in_reply_to is None


@pytest.mark.parametrize(
    "data",
    [
        "{}",
        '{"payload": {"room_id": "r"}}',
        '{"type": null}',
        '{"type": 1}',
        '{"type": true}',
        '{"type": ["join"]}',
        '{"type": {"join": 1}}',
    ],
)
def test_missing_or_non_string_type_is_invalid_message(data: str) -> None:
    err = rejected(data)
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to is None


@pytest.mark.parametrize(
    "kind",
    ["", "JOIN", "Join", "join ", "ping", "notify-client-id", "new-client", "error"],
)
def test_unknown_type(kind: str) -> None:
    err = rejected(frame(kind, {"room_id": "r", "client_id": "c", "sdp": "s"}))
    assert err.code == UNKNOWN_TYPE
    assert err.in_reply_to == kind


@pytest.mark.parametrize("kind", PAYLOAD_KINDS)
@pytest.mark.parametrize(
    "payload_json", [None, "null", "[]", '[{"room_id": "r"}]', '"x"', "1", "true"]
)
def test_payload_missing_or_not_object(kind: str, payload_json: str | None) -> None:
    if payload_json is None:
        data = '{"type": "' + kind + '"}'
    else:
        data = '{"type": "' + kind + '", "payload": ' + payload_json + "}"
    err = rejected(data)
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to == kind


@pytest.mark.parametrize("payload_json", ["[]", '"x"', "0", "false"])
def test_leave_payload_not_object(payload_json: str) -> None:
    err = rejected('{"type": "leave", "payload": ' + payload_json + "}")
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to == "leave"


def _relay_payload(kind: str) -> dict[str, Any]:
    field = "sdp" if kind in SDP_KINDS else "candidate"
    return {"client_id": "peer", field: "body"}


@pytest.mark.parametrize("kind", RELAY_KINDS)
@pytest.mark.parametrize("client_id", ["<missing>", None, 1, 1.5, True, [], ["a"], {}])
def test_missing_or_non_string_client_id(kind: str, client_id: Any) -> None:
    payload = _relay_payload(kind)
    if client_id == "<missing>":
        del payload["client_id"]
    else:
        payload["client_id"] = client_id
    err = rejected(frame(kind, payload))
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to == kind


@pytest.mark.parametrize("kind", SDP_KINDS)
def test_missing_sdp(kind: str) -> None:
    err = rejected(frame(kind, {"client_id": "peer"}))
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to == kind
    # A "candidate" field does not stand in for the sdp.
    err = rejected(frame(kind, {"client_id": "peer", "candidate": "c"}))
    assert err.code == INVALID_MESSAGE


@pytest.mark.parametrize("kind", SDP_KINDS)
@pytest.mark.parametrize("sdp", [None, 0, 1.5, True, [], ["v=0"], {}, {"sdp": "v=0"}])
def test_non_string_sdp(kind: str, sdp: Any) -> None:
    err = rejected(frame(kind, {"client_id": "peer", "sdp": sdp}))
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to == kind


def test_missing_candidate() -> None:
    err = rejected(frame("candidate", {"client_id": "peer"}))
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to == "candidate"


@pytest.mark.parametrize("candidate", [0, 42, -1.5, True, False, [], ["candidate:1"], [{}]])
def test_candidate_number_bool_or_list(candidate: Any) -> None:
    err = rejected(frame("candidate", {"client_id": "peer", "candidate": candidate}))
    assert err.code == INVALID_MESSAGE
    assert err.in_reply_to == "candidate"


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"room_id": None},
        {"room_id": ""},
        {"room_id": 0},
        {"room_id": 12},
        {"room_id": True},
        {"room_id": ["r"]},
        {"room_id": {"id": "r"}},
        {"roomId": "r"},
    ],
)
def test_bad_room_id(payload: dict[str, Any]) -> None:
    err = rejected(frame("join", payload))
    assert err.code == INVALID_ROOM_ID
    assert err.in_reply_to == "join"


def test_room_id_length_limit_default() -> None:
    assert DEFAULT_MAX_ROOM_ID_LENGTH == 256
    ok = "r" * DEFAULT_MAX_ROOM_ID_LENGTH
    assert parse(frame("join", {"room_id": ok})) == Join(ok)
    err = rejected(frame("join", {"room_id": ok + "r"}))
    assert err.code == INVALID_ROOM_ID
    assert err.in_reply_to == "join"
    err = rejected(frame("join", {"room_id": "r" * 100_000}))
    assert err.code == INVALID_ROOM_ID


def test_room_id_length_counts_characters_not_bytes() -> None:
    ok = "é" * DEFAULT_MAX_ROOM_ID_LENGTH  # 512 UTF-8 bytes, 256 characters
    raw = json.dumps({"type": "join", "payload": {"room_id": ok}}, ensure_ascii=False)
    assert parse(raw.encode("utf-8")) == Join(ok)
    assert rejected(frame("join", {"room_id": ok + "é"})).code == INVALID_ROOM_ID


@pytest.mark.parametrize("limit", [1, 5, 300, 1000])
def test_room_id_length_limit_custom(limit: int) -> None:
    ok = "x" * limit
    assert parse(frame("join", {"room_id": ok}), max_room_id_length=limit) == Join(ok)
    assert parse(frame("join", {"room_id": ok}), limit) == Join(ok)
    err = rejected(frame("join", {"room_id": ok + "x"}), max_room_id_length=limit)
    assert err.code == INVALID_ROOM_ID
    assert err.in_reply_to == "join"


def test_custom_limit_allows_longer_than_default() -> None:
    long_id = "z" * (DEFAULT_MAX_ROOM_ID_LENGTH + 1)
    assert rejected(frame("join", {"room_id": long_id})).code == INVALID_ROOM_ID
    assert parse(frame("join", {"room_id": long_id}), max_room_id_length=512) == Join(long_id)


def test_custom_limit_smaller_than_default() -> None:
    err = rejected(frame("join", {"room_id": "abcdef"}), max_room_id_length=5)
    assert err.code == INVALID_ROOM_ID
    assert parse(frame("join", {"room_id": "abcde"}), max_room_id_length=5) == Join("abcde")


DEEP = 100_000


@pytest.mark.parametrize(
    "data",
    [
        "[" * DEEP + "]" * DEEP,
        "[" * DEEP,
        '{"a":' * DEEP + "1" + "}" * DEEP,
        '{"type": "leave", "payload": {"x": ' + "[" * DEEP + "]" * DEEP + "}}",
        '{"type": "join", "payload": {"room_id": "r", "x": ' + "[" * DEEP + "]" * DEEP + "}}",
        '{"type": "candidate", "payload": {"client_id": "c", "candidate": '
        + '{"a":' * DEEP
        + "{}"
        + "}" * DEEP
        + "}}",
        '{"type": "candidate", "payload": {"client_id": "c", "candidate": {"k": '
        + "[" * DEEP
        + "]" * DEEP
        + "}}}",
    ],
    ids=[
        "arrays",
        "unclosed-arrays",
        "objects",
        "in-leave-payload",
        "in-join-payload",
        "candidate-objects",
        "candidate-arrays",
    ],
)
def test_deep_nesting_is_invalid_json_not_recursion_error(data: str) -> None:
    for d in as_bytes_and_str(data):
        try:
            parse(d)
        except ProtocolError as e:
            assert e.code == INVALID_JSON
        else:
            pytest.fail("deeply nested JSON was accepted")


def _nested_candidate_frame(depth: int) -> str:
    return (
        '{"type": "candidate", "payload": {"client_id": "c", "candidate": '
        + '{"a":' * depth
        + "{}"
        + "}" * depth
        + "}}"
    )


@pytest.mark.parametrize("depth", [0, 1, MAX_CANDIDATE_DEPTH - 1])
def test_nested_candidate_within_limit_is_accepted_and_relayable(depth: int) -> None:
    result = parse(_nested_candidate_frame(depth))
    assert isinstance(result, Relay)
    out = json.loads(messages.relayed("candidate", "sender", result.body))
    assert out["payload"]["candidate"] == result.body


@pytest.mark.parametrize("depth", [MAX_CANDIDATE_DEPTH, 252, 500, 1000])
def test_candidate_nested_too_deep_is_invalid_message(depth: int) -> None:
    """Anything parse() accepts must also encode (orjson.dumps stops near 254)."""
    with pytest.raises(ProtocolError) as info:
        parse(_nested_candidate_frame(depth))
    assert info.value.code == INVALID_MESSAGE
    assert info.value.in_reply_to == "candidate"


def test_candidate_depth_counts_lists_too() -> None:
    body = "[" * (MAX_CANDIDATE_DEPTH) + "]" * (MAX_CANDIDATE_DEPTH)
    frame = '{"type": "candidate", "payload": {"client_id": "c", "candidate": {"a": ' + body + "}}}"
    with pytest.raises(ProtocolError) as info:
        parse(frame)
    assert info.value.code == INVALID_MESSAGE


# --------------------------------------------------------------------------
# Encoders
# --------------------------------------------------------------------------


def decode(data: bytes) -> Any:
    assert isinstance(data, bytes)
    return json.loads(data)  # also checks the bytes are valid UTF-8 JSON


def test_encode_notify_client_id() -> None:
    assert decode(messages.notify_client_id("abc_-1")) == {
        "type": "notify-client-id",
        "payload": {"client_id": "abc_-1"},
    }


def test_encode_new_client() -> None:
    assert decode(messages.new_client("c1")) == {
        "type": "new-client",
        "payload": {"client_id": "c1"},
    }


def test_encode_leave_client() -> None:
    assert decode(messages.leave_client("c2")) == {
        "type": "leave-client",
        "payload": {"client_id": "c2"},
    }


@pytest.mark.parametrize("clients", [[], ["a"], ["a", "b", "c"]])
def test_encode_joined(clients: list[str]) -> None:
    assert decode(messages.joined("salle-🎥", clients)) == {
        "type": "joined",
        "payload": {"room_id": "salle-🎥", "clients": clients},
    }


@pytest.mark.parametrize("kind", SDP_KINDS)
def test_encode_relayed_sdp(kind: str) -> None:
    assert decode(messages.relayed(kind, "sender-id", SDP)) == {
        "type": kind,
        "payload": {"client_id": "sender-id", "sdp": SDP},
    }


@pytest.mark.parametrize(
    "body",
    [
        {
            "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": None,
        },
        "candidate:1 1 udp 1 1.2.3.4 5 typ host",
        None,
        {},
    ],
)
def test_encode_relayed_candidate(body: Any) -> None:
    assert decode(messages.relayed("candidate", "sender-id", body)) == {
        "type": "candidate",
        "payload": {"client_id": "sender-id", "candidate": body},
    }


def test_relayed_uses_sender_not_target() -> None:
    msg = parse(frame("offer", {"client_id": "target-id", "sdp": "v=0\r\n"}))
    assert isinstance(msg, Relay)
    out = decode(messages.relayed(msg.type, "sender-id", msg.body))
    assert out == {
        "type": "offer",
        "payload": {"client_id": "sender-id", "sdp": "v=0\r\n"},
    }


def test_encode_error() -> None:
    assert decode(messages.error("invalid_json", "bad")) == {
        "type": "error",
        "payload": {"code": "invalid_json", "message": "bad"},
    }


def test_encode_error_with_details() -> None:
    out = decode(
        messages.error(
            messages.UNKNOWN_CLIENT,
            "no such client",
            in_reply_to="offer",
            client_id="x",
        )
    )
    assert out == {
        "type": "error",
        "payload": {
            "code": "unknown_client",
            "message": "no such client",
            "in_reply_to": "offer",
            "client_id": "x",
        },
    }
    out = decode(messages.error(messages.ALREADY_IN_ROOM, "m", in_reply_to=None, room_id="r"))
    assert out["payload"] == {
        "code": "already_in_room",
        "message": "m",
        "in_reply_to": None,
        "room_id": "r",
    }


def test_encode_generic() -> None:
    assert decode(messages.encode("x", {"a": [1, None]})) == {
        "type": "x",
        "payload": {"a": [1, None]},
    }


def test_error_codes_are_the_documented_set() -> None:
    """Every code the server can send has a row in README.rst's error table."""
    readme = (Path(__file__).resolve().parent.parent / "README.rst").read_text()
    table = readme.split("\nErrors\n", 1)[1].split("\n\n", 3)[2]
    documented = set(re.findall(r"^``([a-z_]+)``", table, re.MULTILINE))
    assert documented == ERROR_CODES


# --------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------


def assert_total(data: bytes | str, **kwargs: Any) -> Any:
    """parse() returns a message or raises a ProtocolError with a known code,
    or NotUtf8 for exactly those bytes that are not UTF-8."""
    try:
        result = parse(data, **kwargs)
    except NotUtf8:
        assert isinstance(data, bytes)
        with pytest.raises(UnicodeDecodeError):
            data.decode("utf-8")
        return None
    except ProtocolError as e:
        assert e.code in ERROR_CODES
        assert isinstance(e.message, str)
        assert e.in_reply_to is None or isinstance(e.in_reply_to, str)
        return e
    assert type(result) in (Join, Leave, Relay)
    return result


# Any JSON value json.dumps can produce (including NaN/Infinity and huge ints).
any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

# JSON values that survive a round-trip unchanged (finite floats, 64-bit ints).
plain_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

kinds = st.sampled_from(["join", "leave", "offer", "answer", "candidate"]) | st.text(max_size=12)

# Objects shaped like client messages, to exercise the deeper branches.
message_like = st.fixed_dictionaries(
    {},
    optional={
        "type": kinds | any_json,
        "payload": st.fixed_dictionaries(
            {},
            optional={
                "room_id": st.text(max_size=300) | any_json,
                "client_id": st.text(max_size=10) | any_json,
                "sdp": st.text() | any_json,
                "candidate": any_json,
            },
        )
        | any_json,
    },
)


@settings(deadline=None)
@given(st.binary())
def test_property_arbitrary_bytes(data: bytes) -> None:
    assert_total(data)


@settings(deadline=None)
@given(st.text(alphabet=st.characters(codec=None)))
def test_property_arbitrary_text_including_surrogates(data: str) -> None:
    assert_total(data)
    assert_total(data.encode("utf-8", "surrogatepass"))


@settings(deadline=None)
@given(st.text(alphabet='{}[]":,\\ 0123456789.eE-+truefalsnl\x00\xff\u00e9\ud800'))
def test_property_json_like_text(data: str) -> None:
    assert_total(data)


@settings(deadline=None)
@given(any_json | message_like, st.booleans(), st.booleans())
def test_property_arbitrary_json_values(value: Any, ensure_ascii: bool, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=ensure_ascii)
    data: bytes | str = text.encode("utf-8", "surrogatepass") if as_bytes else text
    result = assert_total(data)
    if type(value) is not dict and result is not None:  # None: bytes not UTF-8
        assert isinstance(result, ProtocolError)
        # Non-objects are invalid_message, except what orjson refuses to read
        # (NaN/Infinity, out-of-range numbers, lone surrogates).
        assert result.code in (INVALID_MESSAGE, INVALID_JSON)


@settings(deadline=None)
@given(message_like, st.integers(min_value=1, max_value=400))
def test_property_room_id_limit(value: dict[str, Any], limit: int) -> None:
    result = assert_total(json.dumps(value), max_room_id_length=limit)
    if isinstance(result, Join):
        assert 1 <= len(result.room_id) <= limit


# Generated valid messages -------------------------------------------------

client_ids = st.text(max_size=30)
room_ids = st.text(min_size=1, max_size=DEFAULT_MAX_ROOM_ID_LENGTH)
sdps = st.text(alphabet=st.characters(codec="utf-8"), max_size=300) | st.just(SDP)
candidate_bodies = (
    st.none()
    | st.text()
    | st.dictionaries(st.text(max_size=10), plain_json, max_size=6)
    | st.fixed_dictionaries(
        {
            "candidate": st.text(),
            "sdpMid": st.none() | st.text(max_size=3),
            "sdpMLineIndex": st.none() | st.integers(0, 10),
        }
    )
)
extra_fields = st.dictionaries(
    st.text(max_size=10).filter(lambda k: k not in ("room_id", "client_id", "sdp", "candidate")),
    plain_json,
    max_size=3,
)


def _encode(obj: Any, ensure_ascii: bool, as_bytes: bool) -> bytes | str:
    text = json.dumps(obj, ensure_ascii=ensure_ascii)
    return text.encode("utf-8") if as_bytes else text


@st.composite
def valid_messages(draw: st.DrawFn) -> tuple[dict[str, Any], Any]:
    kind = draw(st.sampled_from(["join", "leave", "offer", "answer", "candidate"]))
    extra = draw(extra_fields)
    if kind == "join":
        room_id = draw(room_ids)
        return {"type": kind, "payload": {**extra, "room_id": room_id}}, Join(room_id)
    if kind == "leave":
        shape = draw(st.sampled_from(["none", "null", "object"]))
        if shape == "none":
            return {"type": "leave"}, Leave()
        if shape == "null":
            return {"type": "leave", "payload": None}, Leave()
        return {"type": "leave", "payload": extra}, Leave()
    target = draw(client_ids)
    if kind == "candidate":
        body = draw(candidate_bodies)
        payload = {**extra, "client_id": target, "candidate": body}
    else:
        body = draw(sdps)
        payload = {**extra, "client_id": target, "sdp": body}
    return {"type": kind, "payload": payload}, Relay(kind, target, body)


@settings(deadline=None)
@given(valid_messages(), st.booleans(), st.booleans())
def test_property_valid_messages_parse_exactly(
    case: tuple[dict[str, Any], Any], ensure_ascii: bool, as_bytes: bool
) -> None:
    obj, expected = case
    result = parse(_encode(obj, ensure_ascii, as_bytes))
    assert type(result) is type(expected)
    assert result == expected


@settings(deadline=None)
@given(valid_messages(), client_ids, st.booleans())
def test_property_relayed_round_trips_body(
    case: tuple[dict[str, Any], Any], sender: str, ensure_ascii: bool
) -> None:
    obj, expected = case
    result = parse(_encode(obj, ensure_ascii, True))
    if not isinstance(result, Relay):
        return
    field = "sdp" if result.type in SDP_KINDS else "candidate"
    out = json.loads(messages.relayed(result.type, sender, result.body))
    assert out == {
        "type": result.type,
        "payload": {"client_id": sender, field: expected.body},
    }
    # And what the target receives is itself parseable as the same body.
    back = parse(json.dumps({"type": result.type, "payload": {**out["payload"], "client_id": "t"}}))
    assert back == Relay(result.type, "t", expected.body)


@settings(deadline=None)
@given(room_ids, st.integers(min_value=1, max_value=DEFAULT_MAX_ROOM_ID_LENGTH))
def test_property_room_id_length_boundary(room_id: str, limit: int) -> None:
    data = frame("join", {"room_id": room_id})
    if len(room_id) <= limit:
        assert parse(data, max_room_id_length=limit) == Join(room_id)
    else:
        err = rejected(data, max_room_id_length=limit)
        assert err.code == INVALID_ROOM_ID
