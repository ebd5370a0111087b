"""ICE servers in ``joined``: --stun, --turn with coturn ``use-auth-secret`` credentials."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from twisted.python import usage
from websockets.sync.client import connect

from signaling.access.ice import IceServers, check_url, read_secret, turn_credential
from signaling.ops.tap import Options

from .conftest import TIMEOUT, Client
from .twistd_process import usage_error

# Computed apart from this code, with
#   printf %s 1700000000:abcDEF-123_xyz0123456789 |
#   openssl dgst -sha1 -hmac north-wind -binary | base64
KNOWN_SECRET = b"north-wind"
KNOWN_USERNAME = "1700000000:abcDEF-123_xyz0123456789"
KNOWN_CREDENTIAL = "P8olrbAWObbMI4iTibHtHKbT7uc="


def coturn_credential(secret: bytes, username: str) -> str:
    """coturn's formula, written out here: base64(HMAC-SHA1(secret, username))."""
    return base64.b64encode(hmac.new(secret, username.encode(), hashlib.sha1).digest()).decode()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


def test_turn_credential_matches_a_vector_computed_with_openssl() -> None:
    assert turn_credential(KNOWN_SECRET, KNOWN_USERNAME) == KNOWN_CREDENTIAL
    assert coturn_credential(KNOWN_SECRET, KNOWN_USERNAME) == KNOWN_CREDENTIAL


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
def test_turn_credential_matches_openssl_for_random_secrets() -> None:
    for _ in range(3):
        secret = secrets.token_urlsafe(24)
        username = f"{secrets.randbelow(2**32)}:{secrets.token_urlsafe(16)}"
        digest = subprocess.run(
            ["openssl", "dgst", "-sha1", "-hmac", secret, "-binary"],
            input=username.encode(),
            capture_output=True,
            check=True,
        ).stdout
        assert turn_credential(secret.encode(), username) == base64.b64encode(digest).decode()


def test_turn_username_expires_ttl_after_the_clock() -> None:
    clock = Clock(1_700_000_000.75)
    ice = IceServers(clock.seconds, turn=["turn:127.0.0.1:3478"], secret=b"s", ttl=600)
    (turn,) = ice("client-a")
    assert turn == {
        "urls": ["turn:127.0.0.1:3478"],
        "username": "1700000600:client-a",
        "credential": coturn_credential(b"s", "1700000600:client-a"),
    }
    clock.now += 30
    assert ice("client-a")[0]["username"] == "1700000630:client-a"
    assert ice("client-b")[0]["username"] == "1700000630:client-b"


def test_default_ttl_is_a_day_and_stun_comes_first_without_credentials() -> None:
    ice = IceServers(
        Clock(1000).seconds,
        stun=["stun:a.example:3478", "stuns:b.example"],
        turn=["turn:t.example", "turns:t.example:5349?transport=tcp"],
        secret=b"s",
    )
    stun, turn = ice("x")
    assert stun == {"urls": ["stun:a.example:3478", "stuns:b.example"]}
    assert turn["urls"] == ["turn:t.example", "turns:t.example:5349?transport=tcp"]
    assert turn["username"] == f"{1000 + 86400}:x"


def test_stun_alone_needs_no_secret_and_turn_needs_one() -> None:
    assert IceServers(Clock(0).seconds, stun=["stun:s"])("x") == [{"urls": ["stun:s"]}]
    with pytest.raises(ValueError):
        IceServers(Clock(0).seconds, turn=["turn:t"])


@pytest.mark.parametrize(
    "kind, url",
    [
        ("stun", "stun:127.0.0.1"),
        ("stun", "stun:stun.example.com:3478"),
        ("stun", "stuns:[::1]:5349"),
        ("turn", "turn:127.0.0.1:3478"),
        ("turn", "turn:turn.example.com?transport=udp"),
        ("turn", "turns:turn.example.com:443?transport=tcp"),
    ],
)
def test_urls_browsers_accept(kind: str, url: str) -> None:
    check_url(kind, url)


@pytest.mark.parametrize(
    "kind, url",
    [
        ("stun", "turn:127.0.0.1"),
        ("stun", "stun.example.com"),
        ("stun", "stun:"),
        ("stun", "stun:host?transport=udp"),
        ("stun", "stun:host:0"),
        ("stun", "stun:host:70000"),
        ("turn", "stun:127.0.0.1"),
        ("turn", "turn://user@host"),
        ("turn", "turn:host?transport=sctp"),
        ("turn", "turn:host:port"),
    ],
)
def test_urls_browsers_refuse(kind: str, url: str) -> None:
    with pytest.raises(ValueError, match=f"not a {kind.upper()} URL like {kind}:HOST"):
        check_url(kind, url)


def test_secret_file_loses_only_its_line_break(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b" two words \r\n")
    assert read_secret(str(path)) == b" two words "
    path.write_bytes(b"\n")
    with pytest.raises(ValueError, match="is empty"):
        read_secret(str(path))
    with pytest.raises(ValueError, match="cannot read"):
        read_secret(str(tmp_path / "missing"))


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(["--port", "0", "--interface", "127.0.0.1", *args])
    return options


@pytest.fixture
def secret_file(tmp_path: Path) -> str:
    path = tmp_path / "turn-secret"
    path.write_text("correct horse\n")
    return str(path)


def test_options_read_the_secret(secret_file: str) -> None:
    options = parse("--turn", "turn:127.0.0.1", "--turn-secret", secret_file)
    assert options["turn"] == ["turn:127.0.0.1"] and options["stun"] == []
    assert options.turn_secret == b"correct horse"
    assert parse("--stun", "stun:a", "--stun", "stun:b")["stun"] == ["stun:a", "stun:b"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--turn", "turn:127.0.0.1"], "--turn needs --turn-secret FILE"),
        (["--turn-secret", "SECRET"], "--turn-secret needs --turn URL"),
        (["--stun", "stun:s", "--turn-ttl", "60"], "--turn-ttl needs --turn URL"),
        (["--stun", "turn:127.0.0.1"], "--stun: 'turn:127.0.0.1' is not a STUN URL"),
        (["--turn", "stun:127.0.0.1"], "--turn: 'stun:127.0.0.1' is not a TURN URL"),
        (["--turn", "turn:t", "--turn-secret", "MISSING"], "--turn-secret: cannot read"),
        (["--turn", "turn:t", "--turn-secret", "SECRET", "--turn-ttl", "0"], "0 is not a positive"),
    ],
)
def test_usage_errors(secret_file: str, args: list[str], message: str) -> None:
    args = [secret_file if a == "SECRET" else a for a in args]
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_twistd_refuses_turn_without_a_secret(tmp_path: Path) -> None:
    output = usage_error(tmp_path, "--port", "0", "--turn", "turn:127.0.0.1:3478")
    assert "--turn needs --turn-secret FILE" in output


def test_joined_carries_ice_servers_with_credentials_per_client(run_twistd, tmp_path: Path) -> None:
    secret = tmp_path / "turn-secret"
    secret.write_text("s3cret\n")
    turn_urls = ["turn:127.0.0.1:3478", "turns:turn.example.com:5349?transport=tcp"]
    before = int(time.time())
    server = run_twistd(
        "--port", "0", "--interface", "127.0.0.1",
        "--stun", "stun:127.0.0.1:3478",
        "--turn", turn_urls[0], "--turn", turn_urls[1],
        "--turn-secret", str(secret),
        "--turn-ttl", "600",
    )  # fmt: skip
    url = f"ws://127.0.0.1:{server.port}/connect"
    with (
        connect(url, proxy=None, open_timeout=TIMEOUT) as ws_a,
        connect(url, proxy=None, open_timeout=TIMEOUT) as ws_b,
    ):
        a, b = Client(ws_a), Client(ws_b)
        a.send("join", {"room_id": "r"})
        b.send("join", {"room_id": "r"})
        joins = [a.expect("joined"), b.expect("joined")]
        after = int(time.time())
        for client, joined in zip((a, b), joins, strict=True):
            stun, turn = joined["ice_servers"]
            assert stun == {"urls": ["stun:127.0.0.1:3478"]}
            assert turn["urls"] == turn_urls
            expiry, client_id = turn["username"].split(":")
            assert client_id == client.id
            assert before + 600 <= int(expiry) <= after + 600
            # The secret without the file's line break, as coturn reads static-auth-secret.
            assert turn["credential"] == coturn_credential(b"s3cret", turn["username"])
        assert joins[0]["clients"] == [] and joins[1]["clients"] == [a.id]
        assert a.expect("new-client") == {"client_id": b.id}
    assert "clients get ICE servers in joined: stun:127.0.0.1:3478, turn:" in server.output


def test_no_ice_servers_without_the_options(server) -> None:
    client = server.client()
    client.send("join", {"room_id": "r"})
    assert "ice_servers" not in client.expect("joined")
