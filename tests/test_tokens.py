"""Room tokens: the TokenGate's every answer, its options, the minting CLI,
and joins with tokens through a real server."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.python import usage
from websockets.sync.client import connect

from signaling.access import tokens
from signaling.access.tokens import TokenGate, read_public_key, read_secret
from signaling.core.access import Grant, JoinRequest, Unauthorized
from signaling.ops.tap import Options

from .certs import CertificateAuthority
from .conftest import TIMEOUT, Client, RunningServer, on_reactor

ROOT = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
SECRET = b"s3cret-of-forty-eight-bytes-for-hs256-tokens-ok!"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def mint(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def claims(room: Any = "r1", ttl: float = 60, now: float = NOW, **more: Any) -> dict[str, Any]:
    return {"room": room, "exp": now + ttl, **more}


def gate(key: Any = SECRET, algorithm: str = "HS256", **options: Any) -> TokenGate:
    clock = Clock()
    clock.advance(NOW)
    return TokenGate(key, algorithm, clock, **options)


def refusal(outcome: Grant | Unauthorized) -> str:
    assert isinstance(outcome, Unauthorized), outcome
    return outcome.text


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A token put together by hand, HMAC-SHA256-signed with ``key`` (or unsigned)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(private: Any) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- the gate's answers ---------------------------------------------------


def test_a_valid_token_grants_its_identity_and_room_bound() -> None:
    token = mint(claims(sub="u1", name="Ann", metadata={"role": ["host"]}, max_room_size=3))
    outcome = gate().decide("r1", token)
    assert outcome == Grant(
        identity={"sub": "u1", "name": "Ann", "metadata": {"role": ["host"]}}, max_room_size=3
    )
    assert gate().decide("r1", mint(claims())) == Grant()


def test_check_answers_through_the_callback_once() -> None:
    answers: list[Any] = []
    the_gate = gate()
    the_gate.check(JoinRequest("r1", "c1", "127.0.0.1", mint(claims(sub="u"))), answers.append)
    the_gate.check(JoinRequest("r2", "c2", "127.0.0.1", mint(claims())), answers.append)
    assert answers[0] == Grant(identity={"sub": "u"})
    assert refusal(answers[1]) == "the token is not for this room"
    assert len(answers) == 2
    the_gate.left("r1", "c1")  # nothing to forget


@pytest.mark.parametrize("token", [None, ""])
def test_no_token_is_refused_unless_the_room_is_anonymous(token: str | None) -> None:
    assert refusal(gate().decide("r1", token)) == "a token is required to join this room"
    lobby = gate(anonymous_rooms=["lobby-*", "open"])
    assert lobby.decide("lobby-1", token) == Grant()
    assert lobby.decide("open", token) == Grant()
    assert refusal(lobby.decide("r1", token)) == "a token is required to join this room"
    assert refusal(lobby.decide("Lobby-1", token)) == "a token is required to join this room"


def test_a_token_for_an_anonymous_room_is_still_checked() -> None:
    lobby = gate(anonymous_rooms=["lobby-*"])
    assert lobby.decide("lobby-1", mint(claims("lobby-1", sub="u"))) == Grant(identity={"sub": "u"})
    assert refusal(lobby.decide("lobby-1", mint(claims("lobby-1", ttl=-60)))) == "token expired"


@pytest.mark.parametrize(
    ("room", "pattern", "admitted", "refused"),
    [
        ("r1", None, ["r1"], ["r2", "R1", "r1 ", "r10"]),
        # a room id is compared exactly, whatever its characters: a room
        # named "*" or "meeting[1]" is only that room
        ("*", None, ["*"], ["anything", "r1"]),
        ("meeting[1]", None, ["meeting[1]"], ["meeting1"]),
        (["a", "b-*"], None, ["a", "b-*"], ["c", "ab", "b-1"]),
        (None, "team-*", ["team-", "team-a", "team-a/b"], ["team", "Team-a", "xteam-a"]),
        (None, "r?", ["r1", "r2"], ["r", "r10"]),
        (None, ["a", "b-*"], ["a", "b-1"], ["c", "ab"]),
        (None, "*", ["anything", "x" * 200], []),
        ("lobby", "team-*", ["lobby", "team-1"], ["lobby-1", "team"]),
    ],
)
def test_room_is_an_exact_id_and_room_pattern_a_pattern(
    room: Any, pattern: Any, admitted: list[str], refused: list[str]
) -> None:
    made = claims(room if room is not None else "unused")
    if room is None:
        del made["room"]
    if pattern is not None:
        made["room_pattern"] = pattern
    token = mint(made)
    for room_id in admitted:
        assert gate().decide(room_id, token) == Grant(), room_id
    for room_id in refused:
        assert refusal(gate().decide(room_id, token)) == "the token is not for this room"


def test_an_identity_that_peers_could_not_be_sent_is_refused() -> None:
    for bad in ({"metadata": {"n": 2**64}}, {"metadata": "x" * 5000}):
        refused = refusal(gate().decide("r1", mint(claims(**bad))))
        assert refused.startswith("token claims sub, name, metadata are invalid"), refused


def test_expiry_and_not_before_allow_the_leeway() -> None:
    the_gate = gate(leeway=5)
    expired_3s_ago = mint(claims(ttl=-3))
    assert the_gate.decide("r1", expired_3s_ago) == Grant()
    the_gate.clock.advance(1.9)  # type: ignore[attr-defined]
    assert the_gate.decide("r1", expired_3s_ago) == Grant()
    the_gate.clock.advance(0.1)  # type: ignore[attr-defined]
    assert refusal(the_gate.decide("r1", expired_3s_ago)) == "token expired"
    assert refusal(gate(leeway=0).decide("r1", mint(claims(ttl=0)))) == "token expired"
    assert gate(leeway=0).decide("r1", mint(claims(ttl=0.5))) == Grant()

    for claim in ("nbf", "iat"):
        in_4s = mint(claims(**{claim: NOW + 4}))
        assert the_gate.decide("r1", in_4s) == Grant()
        assert refusal(gate(leeway=3).decide("r1", in_4s)) == "token not valid yet"
        assert gate(leeway=0).decide("r1", mint(claims(**{claim: NOW}))) == Grant()


def test_a_bad_signature_is_refused() -> None:
    other_secret = b"another-secret-of-at-least-thirty-two-bytes"
    assert refusal(gate().decide("r1", mint(claims(), other_secret))) == (
        "token signature is invalid"
    )
    head, _, signature = mint(claims()).split(".")
    tampered = b64(json.dumps(claims("*")).encode())
    assert refusal(gate().decide("r1", f"{head}.{tampered}.{signature}")) == (
        "token signature is invalid"
    )
    ec_token = mint(claims(), ec.generate_private_key(ec.SECP256R1()), "ES256")
    assert refusal(gate(EC_KEY.public_key(), "ES256").decide("r1", ec_token)) == (
        "token signature is invalid"
    )


@pytest.mark.parametrize(
    "token",
    [
        "not a token",
        "a.b.c",
        "a.b",
        "bm90IGpzb24.e30.c2ln",  # header: "not json"
        forged({"alg": "HS256"}, {}, SECRET).replace(".", "..", 1),
    ],
)
def test_a_malformed_token_is_refused(token: str) -> None:
    assert refusal(gate().decide("r1", token)) == "token is malformed"


@pytest.mark.parametrize("payload", [b"[1, 2]", b"not json", b"\xff\xfe"])
def test_a_signed_payload_that_is_not_an_object_is_malformed(payload: bytes) -> None:
    head = b64(b'{"alg": "HS256", "typ": "JWT"}')
    body = b64(payload)
    signature = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    token = f"{head}.{body}.{b64(signature)}"
    assert refusal(gate().decide("r1", token)) == "token is malformed"


def test_only_the_configured_algorithm_is_accepted() -> None:
    unsigned = forged({"alg": "none", "typ": "JWT"}, claims(), None)
    assert "'none' is not accepted (the server expects HS256)" in refusal(
        gate().decide("r1", unsigned)
    )
    # The old confusion: a public key's PEM used as an HMAC secret.
    rsa_gate = gate(RSA_KEY.public_key(), "RS256")
    confused = forged({"alg": "HS256", "typ": "JWT"}, claims(), public_pem(RSA_KEY))
    assert refusal(rsa_gate.decide("r1", confused)) == (
        "token algorithm 'HS256' is not accepted (the server expects RS256)"
    )
    hs512 = mint(claims(), SECRET + SECRET, "HS512")
    assert "'HS512' is not accepted" in refusal(gate().decide("r1", hs512))
    assert "'ES256' is not accepted" in refusal(
        rsa_gate.decide("r1", mint(claims(), EC_KEY, "ES256"))
    )
    assert rsa_gate.decide("r1", mint(claims(), RSA_KEY, "RS256")) == Grant()
    assert (
        gate(EC_KEY.public_key(), "ES256").decide("r1", mint(claims(), EC_KEY, "ES256")) == Grant()
    )


@pytest.mark.parametrize(
    ("bad", "claim"),
    [
        ({"exp": "soon"}, "exp"),
        ({"exp": True}, "exp"),
        ({"nbf": "now"}, "nbf"),
        ({"iat": None}, "iat"),
        ({"room": 5}, "room"),
        ({"room": []}, "room"),
        ({"room": [""]}, "room"),
        ({"room": ["a", 1]}, "room"),
        ({"room": {"id": "r1"}}, "room"),
        ({"room_pattern": 5}, "room_pattern"),
        ({"room_pattern": []}, "room_pattern"),
        ({"sub": 7}, "sub"),
        ({"name": ["Ann"]}, "name"),
        ({"max_room_size": 0}, "max_room_size"),
        ({"max_room_size": -1}, "max_room_size"),
        ({"max_room_size": 2.5}, "max_room_size"),
        ({"max_room_size": True}, "max_room_size"),
        ({"max_room_size": "3"}, "max_room_size"),
    ],
)
def test_a_claim_of_the_wrong_form_is_named(bad: dict[str, Any], claim: str) -> None:
    token = mint({**claims(), **bad})
    assert refusal(gate().decide("r1", token)) == f"token claim {claim} is invalid"


@pytest.mark.parametrize("claim", ["exp", "room"])
def test_a_missing_required_claim_is_named(claim: str) -> None:
    token = mint({name: value for name, value in claims().items() if name != claim})
    assert refusal(gate().decide("r1", token)).startswith(f"token claim {claim} is missing")


def test_an_audience_is_refused_since_none_is_configured() -> None:
    refused = refusal(gate().decide("r1", mint(claims(aud="other-service"))))
    assert refused.startswith("token claim aud is invalid")


def test_refusals_say_nothing_of_other_rooms() -> None:
    token = mint(claims(["secret-room-a", "secret-*"], sub="u"))
    text = refusal(gate().decide("r1", token))
    assert "secret" not in text and "u" not in text.split()


# -- key and secret files -------------------------------------------------


def test_a_secret_file_loses_one_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    for content, secret in [
        (SECRET + b"\n", SECRET),
        (SECRET + b"\r\n", SECRET),
        (SECRET, SECRET),
        (SECRET + b"\n\n", SECRET + b"\n"),
    ]:
        path.write_bytes(content)
        assert read_secret(str(path)) == secret


@pytest.mark.parametrize("content", [b"", b"\n", b"x" * 31 + b"\n"])
def test_a_short_secret_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(content)
    with pytest.raises(tokens.KeyFileError, match="at least 32"):
        read_secret(str(path))


def test_the_public_key_chooses_the_algorithm(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    for private, algorithm in [
        (RSA_KEY, "RS256"),
        (EC_KEY, "ES256"),
        (ec.generate_private_key(ec.SECP384R1()), "ES384"),
    ]:
        path.write_bytes(public_pem(private))
        key, chosen = read_public_key(str(path))
        assert chosen == algorithm
        assert key.public_numbers() == private.public_key().public_numbers()


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (lambda: private_pem(EC_KEY), "it is a private key"),
        (lambda: CertificateAuthority().root.pem, "it is a certificate"),
        (lambda: b"hello", "expected -----BEGIN PUBLIC KEY-----"),
        (lambda: public_pem(ec.generate_private_key(ec.SECP256K1())), "use P-256"),
        (
            lambda: public_pem(rsa.generate_private_key(public_exponent=65537, key_size=1024)),
            "use 2048 or more",
        ),
        (lambda: public_pem(ed25519.Ed25519PrivateKey.generate()), "use an RSA or EC"),
    ],
)
def test_what_is_not_a_usable_public_key_is_refused(
    tmp_path: Path, content: Callable[[], bytes], complaint: str
) -> None:
    path = tmp_path / "key.pem"
    path.write_bytes(content())
    with pytest.raises(tokens.KeyFileError, match=complaint):
        read_public_key(str(path))


# -- options --------------------------------------------------------------


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture
def rsa_files(tmp_path: Path) -> tuple[Path, Path]:
    """The RSA key: (private PEM, public PEM)."""
    private, public = tmp_path / "rsa.pem", tmp_path / "rsa.pub"
    private.write_bytes(private_pem(RSA_KEY))
    public.write_bytes(public_pem(RSA_KEY))
    return private, public


def test_the_options_build_the_gate(secret_file: Path, rsa_files: tuple[Path, Path]) -> None:
    from signaling.ops.tap import _gates
    from signaling.wire.protocol import SignalingFactory

    factory = SignalingFactory(clock=reactor)
    assert parse().token_key is None and _gates(parse(), factory, reactor) == []
    options = parse(
        "--auth-secret",
        str(secret_file),
        "--auth-leeway",
        "2.5",
        "--allow-anonymous-room",
        "lobby-*",
        "--allow-anonymous-room",
        "hall",
    )
    [token_gate] = _gates(options, factory, reactor)
    assert isinstance(token_gate, TokenGate)
    assert (token_gate.key, token_gate.algorithm) == (SECRET, "HS256")
    assert token_gate.leeway == 2.5 and token_gate.anonymous_rooms == ("lobby-*", "hall")
    assert parse("--auth-public-key", str(rsa_files[1])).token_key[1] == "RS256"  # type: ignore[index]
    assert parse("--auth-secret", str(secret_file)).token_key[1] == "HS256"  # type: ignore[index]
    [default] = _gates(parse("--auth-secret", str(secret_file)), factory, reactor)
    assert default.leeway == 5.0  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (
            ["--auth-secret", "SECRET", "--auth-public-key", "PUBLIC"],
            "--auth-secret and --auth-public-key cannot be combined",
        ),
        (["--auth-secret", "MISSING"], "--auth-secret: cannot read"),
        (["--auth-public-key", "MISSING"], "--auth-public-key: cannot read"),
        (["--auth-secret", "SHORT"], "--auth-secret: "),
        (["--auth-public-key", "SECRET"], "--auth-public-key: "),
        (["--auth-public-key", "PRIVATE"], "it is a private key"),
        (["--allow-anonymous-room", "lobby"], "--allow-anonymous-room needs --auth-secret"),
        (["--auth-secret", "SECRET", "--auth-leeway", "-1"], "not a number of seconds"),
    ],
)
def test_contradictions_are_usage_errors(
    tmp_path: Path,
    secret_file: Path,
    rsa_files: tuple[Path, Path],
    args: list[str],
    complaint: str,
) -> None:
    short = tmp_path / "short"
    short.write_bytes(b"x" * 20)
    files = {
        "SECRET": secret_file,
        "PUBLIC": rsa_files[1],
        "PRIVATE": rsa_files[0],
        "SHORT": short,
        "MISSING": tmp_path / "missing",
    }
    with pytest.raises(usage.UsageError) as info:
        parse(*[str(files.get(arg, arg)) for arg in args])
    assert complaint in str(info.value)


# -- through a real server ------------------------------------------------


@pytest.fixture
def open_client(reactor_thread: Any) -> Iterator[Callable[[str], Client]]:
    """Connect real WebSocket clients to a URL; close them after the test."""
    with contextlib.ExitStack() as stack:

        def open_(url: str) -> Client:
            ws = connect(url, open_timeout=TIMEOUT, close_timeout=1, compression=None, proxy=None)
            return Client(stack.enter_context(ws))

        yield open_


@pytest.fixture
def guarded(server: RunningServer) -> Callable[..., RunningServer]:
    """The in-process server, with a TokenGate on the reactor's clock."""

    def install(key: Any = SECRET, algorithm: str = "HS256", **options: Any) -> RunningServer:
        on_reactor(setattr, server.hub, "gate", TokenGate(key, algorithm, reactor, **options))
        return server

    return install


def join_with(client: Client, room_id: str, token: str | None) -> None:
    payload = {"room_id": room_id}
    if token is not None:
        payload["token"] = token
    client.send("join", payload)


def assert_refused(client: Client, text: str) -> None:
    assert client.expect_error("unauthorized")["message"] == text
    assert client.expect_closed() == 4001


def now_claims(room: Any = "r1", ttl: float = 60, **more: Any) -> dict[str, Any]:
    return claims(room, ttl, now=reactor.seconds(), **more)


def test_tokens_in_the_join_or_the_url_admit_with_identities(
    guarded: Callable[..., RunningServer], open_client: Callable[[str], Client]
) -> None:
    server = guarded()
    ann = server.client()
    ann_claims = now_claims("unused", sub="u1", name="Ann")
    del ann_claims["room"]
    join_with(ann, "r1", mint({**ann_claims, "room_pattern": "r*"}))
    assert ann.expect("joined") == {"room_id": "r1", "clients": [], "members": []}
    bob = open_client(f"{server.url}?token={mint(now_claims(sub='u2', metadata={'n': 1}))}")
    join_with(bob, "r1", None)
    assert bob.expect("joined") == {
        "room_id": "r1",
        "clients": [ann.id],
        "members": [{"client_id": ann.id, "sub": "u1", "name": "Ann"}],
    }
    assert ann.expect("new-client") == {"client_id": bob.id, "sub": "u2", "metadata": {"n": 1}}
    assert server.rooms() == {"r1": {ann.id, bob.id}}


def test_the_join_payload_token_wins_over_the_url_token(
    guarded: Callable[..., RunningServer], open_client: Callable[[str], Client]
) -> None:
    server = guarded()
    wrong = mint(now_claims("elsewhere"))
    right = mint(now_claims(sub="payload"))
    first = open_client(f"{server.url}?token={wrong}")
    join_with(first, "r1", right)
    assert first.expect("joined")["members"] == []
    second = open_client(f"{server.url}?token={right}")
    join_with(second, "r1", wrong)
    assert_refused(second, "the token is not for this room")


@pytest.mark.parametrize(
    ("token", "text"),
    [
        (lambda: mint(now_claims(ttl=-60)), "token expired"),
        (lambda: mint(now_claims(nbf=reactor.seconds() + 600)), "token not valid yet"),
        (lambda: mint(now_claims("r2")), "the token is not for this room"),
        (lambda: mint(now_claims(), SECRET[::-1]), "token signature is invalid"),
        (lambda: "garbage", "token is malformed"),
        (lambda: None, "a token is required to join this room"),
        (lambda: mint(now_claims(max_room_size=0)), "token claim max_room_size is invalid"),
    ],
)
def test_a_refused_token_gets_unauthorized_then_4001(
    guarded: Callable[..., RunningServer],
    token: Callable[[], str | None],
    text: str,
) -> None:
    server = guarded()
    client = server.client()
    join_with(client, "r1", token())
    assert_refused(client, text)
    assert server.rooms() == {}


def test_a_refused_url_token_gets_unauthorized_then_4001(
    guarded: Callable[..., RunningServer], open_client: Callable[[str], Client]
) -> None:
    server = guarded()
    client = open_client(f"{server.url}?token={mint(now_claims(ttl=-60))}")
    join_with(client, "r1", None)
    assert_refused(client, "token expired")


def test_anonymous_rooms_admit_without_a_token(guarded: Callable[..., RunningServer]) -> None:
    server = guarded(anonymous_rooms=["lobby-*"])
    guest = server.client()
    join_with(guest, "lobby-1", None)
    assert guest.expect("joined") == {"room_id": "lobby-1", "clients": [], "members": []}
    member = server.client()
    join_with(member, "lobby-1", mint(now_claims("lobby-1", name="Host")))
    assert member.expect("joined")["members"] == [{"client_id": guest.id}]
    assert guest.expect("new-client") == {"client_id": member.id, "name": "Host"}
    stranger = server.client()
    join_with(stranger, "private", None)
    assert_refused(stranger, "a token is required to join this room")


@pytest.mark.parametrize("private", [RSA_KEY, EC_KEY], ids=["RS256", "ES256"])
def test_public_key_tokens(
    guarded: Callable[..., RunningServer], tmp_path: Path, private: Any
) -> None:
    path = tmp_path / "key.pub"
    path.write_bytes(public_pem(private))
    key, algorithm = read_public_key(str(path))
    server = guarded(key, algorithm)
    client = server.client()
    join_with(client, "r1", mint(now_claims(sub="pk"), private, algorithm))
    assert client.expect("joined")["members"] == []
    forger = server.client()
    join_with(forger, "r1", mint(now_claims(), SECRET, "HS256"))
    assert_refused(
        forger, f"token algorithm 'HS256' is not accepted (the server expects {algorithm})"
    )


def test_the_max_room_size_claim_bounds_the_room(guarded: Callable[..., RunningServer]) -> None:
    server = guarded()
    token = mint(now_claims(max_room_size=2))
    first, second, third = server.client(), server.client(), server.client()
    join_with(first, "r1", token)
    first.expect("joined")
    join_with(second, "r1", token)
    second.expect("joined")
    join_with(third, "r1", token)
    third.expect_error("room_full")
    # Not an authorization failure: the connection stays, and may try elsewhere.
    join_with(third, "r2", mint(now_claims("r2")))
    assert third.expect("joined")["room_id"] == "r2"
    # A token without the claim is bound by the server alone.
    join_with(server.client(), "r1", mint(now_claims()))
    assert wait_members(server, "r1", 3)


def wait_members(server: RunningServer, room_id: str, count: int) -> bool:
    from .conftest import wait_for

    return wait_for(lambda: len(server.rooms().get(room_id, ())) == count)


# -- the CLI and twistd ---------------------------------------------------


def mint_cli(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "signaling.token", *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_twistd_with_a_secret_admits_cli_tokens(
    run_twistd: Any, secret_file: Path, open_client: Callable[[str], Client]
) -> None:
    process = run_twistd(
        "--interface",
        "127.0.0.1",
        "--port",
        "0",
        "--auth-secret",
        str(secret_file),
        "--allow-anonymous-room",
        "lobby",
        "--auth-leeway",
        "0",
    )
    url = f"ws://127.0.0.1:{process.port}/connect"
    token = mint_cli(
        "--secret",
        str(secret_file),
        "--room-pattern",
        "team-*",
        "--room",
        "other",
        "--sub",
        "u1",
        "--name",
        "Ann",
        "--metadata",
        '{"seat": 3}',
        "--max-room-size",
        "1",
    )
    ann = open_client(f"{url}?token={token}")
    join_with(ann, "team-a", None)
    assert ann.expect("joined") == {"room_id": "team-a", "clients": [], "members": []}
    lobby = open_client(url)
    join_with(lobby, "lobby", None)
    assert lobby.expect("joined")["members"] == []
    bob = open_client(url)
    join_with(bob, "team-a", token)
    bob.expect_error("room_full")
    join_with(bob, "other", token)
    assert bob.expect("joined")["room_id"] == "other"
    intruder = open_client(url)
    join_with(intruder, "team-a", None)
    assert_refused(intruder, "a token is required to join this room")
    # Expired as soon as minted (exp is in whole seconds), with no leeway.
    expired = mint_cli("--secret", str(secret_file), "--room", "team-a", "--ttl", "0.001")
    late = open_client(url)
    join_with(late, "team-a", expired)
    assert_refused(late, "token expired")
    claims_of = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims_of["exp"] - claims_of["iat"] == 3600
    assert (claims_of["room"], claims_of["room_pattern"]) == ("other", "team-*")


def test_twistd_with_a_public_key_admits_cli_tokens(
    run_twistd: Any, tmp_path: Path, open_client: Callable[[str], Client]
) -> None:
    private, public = tmp_path / "ec.pem", tmp_path / "ec.pub"
    private.write_bytes(private_pem(EC_KEY))
    public.write_bytes(public_pem(EC_KEY))
    process = run_twistd(
        "--interface", "127.0.0.1", "--port", "0", "--auth-public-key", str(public)
    )
    url = f"ws://127.0.0.1:{process.port}/connect"
    token = mint_cli("--private-key", str(private), "--room", "r1", "--sub", "ec")
    assert jwt.get_unverified_header(token)["alg"] == "ES256"
    first, second = open_client(url), open_client(url)
    join_with(first, "r1", token)
    first.expect("joined")
    join_with(second, "r1", token)
    assert second.expect("joined")["members"] == [{"client_id": first.id, "sub": "ec"}]
    assert first.expect("new-client") == {"client_id": second.id, "sub": "ec"}


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--room", "r"], "one of the arguments --secret --private-key is required"),
        (["--secret", "SHORT", "--room", "r"], "at least 32"),
        (["--secret", "SECRET"], "--room"),
        (["--secret", "SECRET", "--room", "r", "--metadata", "{"], "invalid JSON value"),
        (["--secret", "SECRET", "--room", "r", "--max-room-size", "0"], "invalid positive"),
        (["--secret", "SECRET", "--room", "r", "--ttl", "0"], "--ttl must be above 0"),
        (["--private-key", "SECRET", "--room", "r"], "not an unencrypted PEM private key"),
    ],
)
def test_the_cli_refuses_what_it_cannot_sign(
    tmp_path: Path,
    secret_file: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    complaint: str,
) -> None:
    from signaling.token import main

    short = tmp_path / "short"
    short.write_bytes(b"short")
    files = {"SECRET": str(secret_file), "SHORT": str(short)}
    with pytest.raises(SystemExit) as info:
        main([files.get(arg, arg) for arg in args])
    assert info.value.code == 2
    assert complaint in capsys.readouterr().err
