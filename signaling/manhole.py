"""The admin console: an SSH manhole (twisted.conch) over the admin API.

Operators log in with a public key listed in an ``authorized_keys`` file (no
passwords) and get a Python prompt, running in the reactor thread, whose
namespace is :meth:`signaling.admin.Admin.namespace`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application import strports
from twisted.application.service import IService
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.ssh import keys
from twisted.cred.portal import IRealm, Portal
from twisted.python import usage
from zope.interface import implementer

from .listen import check_endpoint
from .logs import ServerLogger

_log = ServerLogger()

DEFAULT_HOST_KEY_PATH = "manhole_host_key"


@dataclass(frozen=True)
class ManholeConfig:
    """A validated ``--manhole*`` configuration."""

    endpoint: str
    authorized_keys: str
    host_key: keys.Key


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """The public keys of one ``authorized_keys`` file, for any user name.

    The file is read again at every login, so keys added to or removed from
    it take effect without a restart.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def read(self) -> list[keys.Key]:
        """The keys in the file now (unparsable lines are logged and skipped)."""
        with open(self.path, "rb") as lines:
            return list(readAuthorizedKeyFile(lines))

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        try:
            return self.read()
        except OSError as e:
            _log.error("cannot read manhole keys {path}: {error}", path=self.path, error=e)
            return []


def load_or_create_host_key(path: str) -> keys.Key:
    """The private host key at ``path``; generate an Ed25519 key there,
    readable by its owner only, if there is none yet."""
    try:
        with open(path, "rb") as existing:
            mode = os.fstat(existing.fileno()).st_mode
            data = existing.read()
    except FileNotFoundError:
        return _create_host_key(path)
    except OSError as e:
        raise usage.UsageError(f"cannot read the manhole host key {path}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise usage.UsageError(
            f"the manhole host key {path} is accessible by other users "
            f"(mode {stat.S_IMODE(mode):04o}); run chmod 600 on it"
        )
    try:
        key = keys.Key.fromString(data)
    except (keys.BadKeyError, keys.EncryptedKeyError, ValueError) as e:
        raise usage.UsageError(f"{path} is not a usable SSH private key: {e}") from None
    if key.isPublic():
        raise usage.UsageError(f"{path} holds a public key; the host key must be private")
    return key


def _create_host_key(path: str) -> keys.Key:
    key = keys.Key(Ed25519PrivateKey.generate())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise usage.UsageError(f"cannot create the manhole host key {path}: {e.strerror}") from None
    with os.fdopen(fd, "wb") as out:
        out.write(key.toString("OPENSSH"))
    _log.info(
        "generated manhole host key {path} ({fingerprint})",
        path=path,
        fingerprint=_fingerprint(key),
    )
    return key


def _split_description(description: str) -> list[str]:
    """Split an endpoint description at unescaped colons, as Twisted does."""
    parts, current, escaped = [], [], False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def is_local_endpoint(description: str) -> bool:
    """True if a server endpoint description only accepts local connections:
    a UNIX socket, or TCP/SSL bound to a loopback address.  All-interfaces
    (no ``interface=``) and endpoint types we cannot judge count as remote."""
    kind, *args = _split_description(description)
    kind = kind.lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
    keywords = dict(arg.split("=", 1) for arg in args if "=" in arg)
    positional = [arg for arg in args if "=" not in arg]
    interface = keywords.get("interface")
    if interface is None and kind != "ssl" and len(positional) > 1:
        interface = positional[1]
    if not interface:
        return False
    if interface.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(interface.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def manhole_config(
    endpoint: str | None, authorized_keys: str | None, host_key_path: str, allow_remote: bool
) -> ManholeConfig | None:
    """Check the ``--manhole*`` options; None when the manhole is off.

    Raises :class:`usage.UsageError` for every mistake an operator can make.
    """
    if not endpoint:
        if authorized_keys:
            raise usage.UsageError("--manhole-keys needs --manhole ENDPOINT")
        return None
    if not authorized_keys:
        raise usage.UsageError(
            "--manhole needs --manhole-keys PATH, an authorized_keys file of the "
            "public keys allowed to log in"
        )
    if not allow_remote and not is_local_endpoint(endpoint):
        raise usage.UsageError(
            f"--manhole {endpoint} would accept connections from other hosts; "
            "bind it to a loopback address (e.g. tcp:2222:interface=127.0.0.1) "
            "or a unix: socket, or pass --manhole-remote"
        )
    check_endpoint("--manhole", endpoint)
    authorized_keys = os.path.abspath(os.path.expanduser(authorized_keys))
    try:
        usable = AuthorizedKeysFile(authorized_keys).read()
    except OSError as e:
        raise usage.UsageError(
            f"cannot read --manhole-keys {authorized_keys}: {e.strerror}"
        ) from None
    if not usable:
        raise usage.UsageError(f"--manhole-keys {authorized_keys} holds no usable public key")
    host_key = load_or_create_host_key(os.path.abspath(os.path.expanduser(host_key_path)))
    return ManholeConfig(endpoint, authorized_keys, host_key)


class _Session(manhole_ssh.TerminalSession):
    """TerminalSession that accepts resizes and ends the session on EOF
    (as sshd does when a client's input ends), instead of raising."""

    _shell: Any = None

    def openShell(self, proto: Any) -> None:
        self._shell = proto
        super().openShell(proto)

    def windowChanged(self, newWindowSize: Any) -> None:
        pass  # the console does not reflow

    def eofReceived(self) -> None:
        if self._shell is not None:
            self._shell.loseConnection()


@implementer(IRealm)
class _ConsoleRealm(manhole_ssh.TerminalRealm):
    """Each login gets a Python console over its own copy of ``namespace``."""

    sessionFactory = _Session

    def __init__(self, namespace: Mapping[str, Any]) -> None:
        super().__init__()
        self.namespace = namespace

    def chainedProtocolFactory(self) -> insults.ServerProtocol:  # type: ignore[override]
        return insults.ServerProtocol(manhole.ColoredManhole, dict(self.namespace))


class _LoggingKeyChecker(SSHPublicKeyChecker):
    """Logs each successful login with the user name and key fingerprint."""

    def requestAvatarId(self, credentials: Any) -> Any:
        def logged(avatar_id: bytes) -> bytes:
            _log.info(
                "manhole login as {user} with key {fingerprint}",
                user=avatar_id.decode("utf-8", "replace"),
                fingerprint=_fingerprint(keys.Key.fromString(credentials.blob)),
            )
            return avatar_id

        return super().requestAvatarId(credentials).addCallback(logged)


def _fingerprint(key: keys.Key) -> str:
    """As ``ssh-keygen -l`` shows it."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def build_manhole_factory(
    namespace: Mapping[str, Any], authorized_keys: IAuthorizedKeysDB, host_key: keys.Key
) -> manhole_ssh.ConchFactory:
    """An SSH server factory: public-key logins only, then a Python console."""
    portal = Portal(_ConsoleRealm(namespace), [_LoggingKeyChecker(authorized_keys)])
    factory = manhole_ssh.ConchFactory(portal)
    # Instance attributes: ConchFactory's class-level dicts are shared.  The
    # transport wants Key objects here, whatever ConchFactory's hints say.
    factory.publicKeys = {host_key.sshType(): host_key.public()}  # type: ignore[dict-item]
    factory.privateKeys = {host_key.sshType(): host_key}  # type: ignore[dict-item]
    return factory


def manhole_service(config: ManholeConfig, namespace: Mapping[str, Any]) -> IService:
    """The service that listens for admin console logins."""
    factory = build_manhole_factory(
        namespace, AuthorizedKeysFile(config.authorized_keys), config.host_key
    )
    service = strports.service(config.endpoint, factory)
    service.setName("manhole")
    return service
