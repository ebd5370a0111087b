"""``python -m signaling.token``: mint a room token, for tests and scripts.

Signs with the secret file of the server's ``--auth-secret`` (HS256) or with
the private key whose public key is the server's ``--auth-public-key``
(RS256, or ES256/ES384/ES512, by the key's type); prints the token. A production backend
mints tokens with its own JWT library (see README.rst, "Securing a
deployment").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import jwt

from signaling.access.tokens import KeyFileError, read_private_key, read_secret


def _positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError(value)
    return number


def _json(value: str) -> Any:
    return json.loads(value)


# The names argparse gives in "invalid ... value".
_positive_int.__name__ = "positive integer"
_json.__name__ = "JSON"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m signaling.token",
        description="Print a room token (a JWT) for a signaling server with "
        "--auth-secret or --auth-public-key.",
    )
    key = p.add_mutually_exclusive_group(required=True)
    key.add_argument("--secret", metavar="FILE", help="the server's --auth-secret file (HS256)")
    key.add_argument(
        "--private-key",
        metavar="FILE",
        help="PEM private key of the server's --auth-public-key (RSA: RS256; EC: ES256, "
        "ES384 or ES512 by curve)",
    )
    p.add_argument(
        "--room",
        action="append",
        default=[],
        help="room id the token admits to (compared exactly); repeatable",
    )
    p.add_argument(
        "--room-pattern",
        action="append",
        default=[],
        help="room id pattern (* and ? are wildcards) the token admits to; repeatable",
    )
    p.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=float,
        default=3600.0,
        help="seconds until it expires [3600]",
    )
    p.add_argument("--sub", help="subject (who), shown to the other members")
    p.add_argument("--name", help="display name, shown to the other members")
    p.add_argument(
        "--max-room-size",
        metavar="N",
        type=_positive_int,
        help="the room may not grow past this many members with this token",
    )
    p.add_argument(
        "--metadata", metavar="JSON", type=_json, help="any JSON value, shown to the other members"
    )
    return p


def mint(args: argparse.Namespace, now: float) -> str:
    """The token that ``args`` describe, issued at ``now``."""
    if args.secret is not None:
        key: Any = read_secret(args.secret)
        algorithm = "HS256"
    else:
        key, algorithm = read_private_key(args.private_key)
    claims: dict[str, Any] = {"iat": int(now), "exp": int(now + args.ttl)}
    for claim, values in (("room", args.room), ("room_pattern", args.room_pattern)):
        if values:
            claims[claim] = values[0] if len(values) == 1 else values
    for name in ("sub", "name", "max_room_size", "metadata"):
        value = getattr(args, name)
        if value is not None:
            claims[name] = value
    return jwt.encode(claims, key, algorithm=algorithm)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.ttl <= 0:
        p.error("--ttl must be above 0")
    if not args.room and not args.room_pattern:
        p.error("give --room or --room-pattern (the rooms the token admits to)")
    try:
        print(mint(args, time.time()))
    except KeyFileError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
