"""Room tokens: JWTs that let a client into the rooms they name.

A :class:`TokenGate` checks the token a join carries (the ``join``
payload's ``token``, else ``?token=`` of the connect URL) with one key and
one algorithm: a shared secret (HS256, ``--auth-secret``) or a public key
(RS256 for RSA, ES256/ES384/ES512 for the NIST curves,
``--auth-public-key``). Claims:

- ``room``: the room id, or a list of them, compared exactly (a room
  named ``*`` is only that room); ``room_pattern``: an ``fnmatch`` pattern
  (``*``, ``?``, ``[...]``), or a list of them; one of the two is required;
- ``exp`` (required), ``nbf`` and ``iat`` (optional): checked with a
  leeway for clock skew;
- ``sub``, ``name`` (strings) and ``metadata`` (any JSON): the member's
  identity, shown to the other members;
- ``max_room_size`` (a positive integer): the room may not grow past it
  with this join.

Rooms matching an anonymous pattern may be joined without a token; a token
given there is still checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_pem_public_key,
)

from signaling.core.access import (
    GateDone,
    Grant,
    JoinRequest,
    Unauthorized,
    identity_of,
    identity_problem,
)
from signaling.core.clock import Clock

#: The shortest HS256 secret accepted, in bytes (RFC 7518 section 3.2).
MIN_SECRET_BYTES = 32

#: The signing algorithm of each elliptic curve (RFC 7518 section 3.4).
_CURVES = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}

MISSING = "a token is required to join this room"
EXPIRED = "token expired"
NOT_YET = "token not valid yet"
BAD_SIGNATURE = "token signature is invalid"
MALFORMED = "token is malformed"
WRONG_ROOM = "the token is not for this room"


class KeyFileError(ValueError):
    """A key or secret file that cannot be used; the text says why."""


def read_secret(path: str) -> bytes:
    """The HS256 secret in the file at ``path``, less one trailing newline."""
    try:
        with open(path, "rb") as file:
            secret = file.read()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None
    secret = secret.removesuffix(b"\n").removesuffix(b"\r")
    if len(secret) < MIN_SECRET_BYTES:
        raise KeyFileError(
            f"{path} holds {len(secret)} bytes; an HS256 secret needs at least "
            f"{MIN_SECRET_BYTES} (make one with: openssl rand -base64 48 > {path})"
        )
    return secret


def _read_pem(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}") from None


def algorithm_of(key: Any, path: str) -> str:
    """The JWS algorithm that goes with ``key`` (public or private)."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < 2048:
            raise KeyFileError(f"{path}: an RSA key of {key.key_size} bits; use 2048 or more")
        return "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        algorithm = _CURVES.get(key.curve.name)
        if algorithm is None:
            raise KeyFileError(
                f"{path}: an EC key on {key.curve.name}; use P-256 (ES256), "
                "P-384 (ES384) or P-521 (ES512)"
            )
        return algorithm
    raise KeyFileError(f"{path}: a {type(key).__name__}; use an RSA or EC (P-256) key")


def read_public_key(path: str) -> tuple[Any, str]:
    """The PEM public key in the file at ``path`` and its algorithm."""
    pem = _read_pem(path)
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        if b"PRIVATE KEY-----" in pem:
            why = (
                "it is a private key, which must stay with the token issuer; give its "
                f"public key (openssl pkey -in {path} -pubout)"
            )
        elif b"-----BEGIN CERTIFICATE-----" in pem:
            why = (
                f"it is a certificate; give its public key (openssl x509 -in {path} -pubkey -noout)"
            )
        else:
            why = "expected -----BEGIN PUBLIC KEY-----"
        raise KeyFileError(f"{path} is not a PEM public key: {why}") from None
    return key, algorithm_of(key, path)


def read_private_key(path: str) -> tuple[Any, str]:
    """The unencrypted PEM private key in the file at ``path`` and its algorithm."""
    pem = _read_pem(path)
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key ({e})") from None
    return key, algorithm_of(key, path)


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _invalid(claim: str) -> Unauthorized:
    return Unauthorized(f"token claim {claim} is invalid")


class TokenGate:
    """Lets a join through if its token is valid and names its room (or
    the room is anonymous and the join has no token)."""

    def __init__(
        self,
        key: Any,
        algorithm: str,
        clock: Clock,
        leeway: float = 5.0,
        anonymous_rooms: Iterable[str] = (),
    ) -> None:
        self.key = key
        self.algorithm = algorithm
        self.clock = clock
        self.leeway = leeway
        self.anonymous_rooms = tuple(anonymous_rooms)

    def check(self, request: JoinRequest, done: GateDone) -> None:
        done(self.decide(request.room_id, request.token))

    def left(self, room_id: str, client_id: str) -> None:
        pass

    def decide(self, room_id: str, token: str | None) -> Grant | Unauthorized:
        """The answer to joining ``room_id`` with ``token``."""
        if not token:
            if _matches(room_id, self.anonymous_rooms):
                return Grant()
            return Unauthorized(MISSING)
        try:
            claims = self._verified(token)
        except Unauthorized as refusal:
            return refusal
        return self._grant(room_id, claims)

    def _verified(self, token: str) -> dict[str, Any]:
        """The claims of ``token`` once its signature and form are checked."""
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthorized(MALFORMED) from None
        if header.get("alg") != self.algorithm:
            # Never "none", never a secret where a public key is configured.
            raise Unauthorized(
                f"token algorithm {str(header.get('alg'))[:16]!r} is not accepted "
                f"(the server expects {self.algorithm})"
            )
        try:
            claims = jwt.decode(
                token,
                self.key,
                algorithms=[self.algorithm],
                # The times and the identity are checked by _grant (times on
                # self.clock), the same way on every PyJWT version.
                options={
                    "require": ["exp"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.InvalidSignatureError:
            raise Unauthorized(BAD_SIGNATURE) from None
        except jwt.MissingRequiredClaimError as e:
            raise Unauthorized(f"token claim {e.claim} is missing") from None
        except jwt.InvalidAudienceError:
            raise Unauthorized("token claim aud is invalid: the server accepts none") from None
        except jwt.InvalidIssuerError:
            raise _invalid("iss") from None
        except (jwt.InvalidTokenError, ValueError, TypeError):
            raise Unauthorized(MALFORMED) from None
        if not isinstance(claims, dict):
            raise Unauthorized(MALFORMED)
        return claims

    def _grant(self, room_id: str, claims: dict[str, Any]) -> Grant | Unauthorized:
        """The grant of a verified token to ``room_id``, or why not."""
        now = self.clock.seconds()
        for claim in ("exp", "nbf", "iat"):
            if claim in claims and not _number(claims[claim]):
                return _invalid(claim)
        if claims["exp"] <= now - self.leeway:
            return Unauthorized(EXPIRED)
        if any(claims.get(claim, -math.inf) > now + self.leeway for claim in ("nbf", "iat")):
            return Unauthorized(NOT_YET)
        if "room" not in claims and "room_pattern" not in claims:
            return Unauthorized("token claim room is missing (or room_pattern)")
        rooms = _strings(claims["room"]) if "room" in claims else []
        if rooms is None:
            return _invalid("room")
        patterns = _strings(claims["room_pattern"]) if "room_pattern" in claims else []
        if patterns is None:
            return _invalid("room_pattern")
        for claim in ("sub", "name"):
            if claim in claims and not isinstance(claims[claim], str):
                return _invalid(claim)
        size = claims.get("max_room_size", 0)
        if "max_room_size" in claims and not (type(size) is int and size > 0):
            return _invalid("max_room_size")
        identity = identity_of(claims)
        problem = identity_problem(identity)
        if problem is not None:
            return Unauthorized(f"token claims sub, name, metadata are invalid: {problem}")
        if room_id not in rooms and not _matches(room_id, patterns):
            return Unauthorized(WRONG_ROOM)
        return Grant(identity=identity, max_room_size=size)


def _strings(value: object) -> list[str] | None:
    """A claim that is a non-empty string or a list of them, as a list; None otherwise."""
    if isinstance(value, str):
        return [value] if value else None
    if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
        return value
    return None


def _matches(room_id: str, patterns: Sequence[str]) -> bool:
    return any(fnmatchcase(room_id, pattern) for pattern in patterns)
