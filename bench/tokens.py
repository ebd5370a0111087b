"""The room-token check's CPU cost per join: ``python -m bench.tokens``.

Mints a token like a backend would (``room``, ``exp``, ``sub``, ``name``) for
each algorithm a server may be configured with, and times
:meth:`signaling.access.tokens.TokenGate.decide` on it in this process (best
of ``--repeat`` runs of ``--joins`` checks). See docs/performance.rst.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet import reactor

from signaling.access.tokens import TokenGate


def keys() -> list[tuple[str, Any, Any]]:
    """(algorithm, signing key, checking key) of each kind a server takes."""
    secret = b"s" * 48
    p256 = ec.generate_private_key(ec.SECP256R1())
    rsa2048 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return [
        ("HS256", secret, secret),
        ("ES256", p256, p256.public_key()),
        ("RS256", rsa2048, rsa2048.public_key()),
    ]


def measure(joins: int, repeat: int) -> dict[str, float]:
    """Microseconds of CPU per token check, by algorithm."""
    claims = {"room": "r1", "exp": int(time.time()) + 3600, "sub": "u1", "name": "Ann"}
    figures = {}
    for algorithm, signing, checking in keys():
        token = jwt.encode(claims, signing, algorithm=algorithm)
        gate = TokenGate(checking, algorithm, reactor)  # its seconds() alone
        if not gate.decide("r1", token).identity:  # type: ignore[union-attr]
            raise SystemExit(f"{algorithm}: the token was refused")
        best = float("inf")
        for _ in range(repeat):
            started = time.process_time()
            for _ in range(joins):
                gate.decide("r1", token)
            best = min(best, time.process_time() - started)
        figures[algorithm] = best / joins * 1e6
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tokens", description=__doc__)
    p.add_argument("--joins", type=int, default=5000, help="checks per run [5000]")
    p.add_argument("--repeat", type=int, default=5, help="runs; the best counts [5]")
    args = p.parse_args(argv)
    for algorithm, us in measure(args.joins, args.repeat).items():
        print(f"{algorithm}: {us:.1f} us CPU per join's token check")
    return 0


if __name__ == "__main__":
    sys.exit(main())
