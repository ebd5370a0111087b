"""The admin console: an SSH manhole (twisted.conch) over the admin API.

Operators log in with a public key listed in an ``authorized_keys`` file (no
passwords) and get a Python prompt, running in the reactor thread, whose
namespace is :meth:`signaling.admin.Admin.namespace`.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from twisted.application.service import IService
from twisted.conch import avatar, manhole
from twisted.conch.checkers import IAuthorizedKeysDB, SSHPublicKeyChecker, readAuthorizedKeyFile
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import channel, connection, keys, session, transport, userauth
from twisted.conch.ssh.common import getNS
from twisted.conch.ssh.factory import SSHFactory
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPushProducer,
    IReactorTime,
    ITCPTransport,
)
from twisted.logger import LogLevel
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from signaling.core.clock import cancel
from signaling.logs import ServerLogger
from signaling.ops.listen import (
    ListeningService,
    address_url,
    check_endpoint,
    endpoint_arguments,
)
from signaling.wire import compat

_log = ServerLogger()

DEFAULT_HOST_KEY_PATH = "manhole_host_key"
#: Seconds a connection may take to log in (``--manhole-auth-timeout``).
DEFAULT_AUTH_TIMEOUT = 30.0


@dataclass(frozen=True)
class ManholeConfig:
    """A validated ``--manhole*`` configuration."""

    endpoint: str
    authorized_keys: str
    host_key: keys.Key
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT


def _parse_key(line: bytes) -> keys.Key:
    """One authorized_keys line as a key; BadKeyError for anything unusable
    (Twisted raises struct, base64 and value errors for damaged keys)."""
    try:
        return keys.Key.fromString(line)
    except keys.BadKeyError:
        raise
    except Exception as e:
        raise keys.BadKeyError(f"damaged key ({type(e).__name__}: {e})") from None


@implementer(IAuthorizedKeysDB)
class AuthorizedKeysFile:
    """The public keys of one ``authorized_keys`` file, for any user name.

    At every login the file is read again if it changed, so keys added to or
    removed from it take effect without a restart.  Lines that are not keys
    are logged (by Twisted, at error level) once per change, not per login.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._version: tuple[int, ...] | None = None
        self._keys: list[keys.Key] = []
        self._error: str | None = None

    def read(self) -> list[keys.Key]:
        """The keys in the file now (unparsable lines are logged and skipped)."""
        with open(self.path, "rb") as lines:
            return list(readAuthorizedKeyFile(lines, _parse_key))

    def getAuthorizedKeys(self, username: bytes) -> Iterable[keys.Key]:
        try:
            status = os.stat(self.path)
            version = (status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
            if version != self._version:
                self._keys, self._version = self.read(), version
            self._error = None
        except OSError as e:
            self._keys, self._version = [], None
            if str(e) != self._error:  # once, not at every attempt
                self._error = str(e)
                _log.error("cannot read manhole keys {path}: {error}", path=self.path, error=e)
        return self._keys


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


def is_local_endpoint(description: str) -> bool:
    """True if a server endpoint description only accepts local connections:
    a UNIX socket, or TCP/SSL bound to a loopback address.  All-interfaces
    (no ``interface=``) and endpoint types we cannot judge count as remote."""
    kind, positional, keywords = endpoint_arguments(description)
    kind = kind.lower()
    if kind == "unix":
        return True
    if kind not in ("tcp", "tcp6", "ssl"):
        return False
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
    endpoint: str | None,
    authorized_keys: str | None,
    host_key_path: str,
    allow_remote: bool,
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
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
    return ManholeConfig(endpoint, authorized_keys, host_key, auth_timeout)


#: Signature algorithms accepted for user keys, advertised as ``server-sig-algs``
#: (RFC 8308): RSA only with SHA-2 (RFC 8332), never ``ssh-rsa`` (SHA-1).
USER_SIGNATURE_ALGORITHMS = (
    b"ssh-ed25519",
    b"ecdsa-sha2-nistp256",
    b"ecdsa-sha2-nistp384",
    b"ecdsa-sha2-nistp521",
    b"rsa-sha2-512",
    b"rsa-sha2-256",
)

#: Host key signature algorithms never offered (SHA-1).
_SHA1_HOST_KEY_ALGORITHMS = frozenset({b"ssh-rsa", b"ssh-dss"})


class _LibraryLogger(ServerLogger):
    """The logger of the twisted.conch classes serving the console.

    Their debug and info lines (key exchange, every auth attempt, every
    channel request; at debug even every keystroke) describe each connection,
    and their warnings and errors are what any client can provoke (a bad key,
    a disconnect message), so: the first are dropped, the second become
    debug events.  The console's own lines use ``_log``.
    """

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: object) -> None:
        if level >= LogLevel.warn:
            super().emit(LogLevel.debug, format, **kwargs)


def _unfiltered_classes() -> list[str]:
    """The twisted.conch classes the console uses that no longer log where
    compat.conch_logger replaces their logger: their lines keep their own
    level."""
    bases = (
        transport.SSHServerTransport,
        userauth.SSHUserAuthServer,
        connection.SSHConnection,
        channel.SSHChannel,
        SSHFactory,
    )
    return compat.conch_classes_without_logger(bases)


class _Logout:
    """``exit`` and ``quit`` in the console: end the session (the builtins
    would raise SystemExit into the event loop)."""

    def __init__(self, logout: Callable[[], None]) -> None:
        self._logout = logout

    def __repr__(self) -> str:
        return "Use exit() or Ctrl-D to log out"

    def __call__(self) -> None:
        self._logout()


@compat.conch_logger(_LibraryLogger())
class _ConsoleChannel(channel.SSHChannel):
    """A ``session`` channel that runs the console on its pty.

    It grants ``pty-req``, ``window-change`` (the console does not reflow) and
    ``shell``; anything else (``exec``, subsystems, ``env``, forwarding) is
    refused.  End of input from the client ends the session, as with sshd.
    """

    name = b"session"
    avatar: _Operator

    _size = (80, 24)
    _terminal: insults.ServerProtocol | None = None

    def request_pty_req(self, data: bytes) -> int:
        _, (rows, columns, _, _), _ = session.parseRequest_pty_req(data)
        self._size = (columns or 80, rows or 24)
        return 1

    def request_window_change(self, data: bytes) -> int:
        return 1

    def request_shell(self, data: bytes) -> int:
        if self._terminal is not None:
            return 0
        namespace = dict(self.avatar.namespace)
        namespace["exit"] = namespace["quit"] = _Logout(self.loseConnection)
        self._terminal = terminal = insults.ServerProtocol(manhole.ColoredManhole, namespace)
        terminal.makeConnection(self)
        assert terminal.terminalProtocol is not None
        terminal.terminalProtocol.terminalSize(*self._size)
        return 1

    def dataReceived(self, data: bytes) -> None:
        if self._terminal is not None:
            try:
                self._terminal.dataReceived(data)
            except SystemExit:  # sys.exit() at the prompt logs out
                self.loseConnection()

    def eofReceived(self) -> None:
        self.loseConnection()

    def loseConnection(self) -> None:
        if self.conn is not None and not self.closing and not self.localClosed:
            # As sshd does when a shell ends; ssh then exits with status 0.
            self.conn.sendRequest(self, b"exit-status", struct.pack(">L", 0))
        super().loseConnection()

    def closed(self) -> None:
        if self._terminal is not None:
            terminal, self._terminal = self._terminal, None
            terminal.connectionLost(Failure(ConnectionDone("session closed")))


class _Operator(avatar.ConchUser):
    """A logged-in operator: sessions only, over their own copy of ``namespace``."""

    def __init__(self, name: str, namespace: Mapping[str, Any]) -> None:
        super().__init__()
        self.name = name
        self.namespace = namespace
        self.channelLookup[b"session"] = _ConsoleChannel


@implementer(IRealm)
class _ConsoleRealm:
    def __init__(self, namespace: Mapping[str, Any], clock: IReactorTime) -> None:
        self.namespace = namespace
        self.clock = clock

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IConchUser not in interfaces:
            raise NotImplementedError("the console only serves SSH logins")
        name = avatarId.decode("utf-8", "replace")
        started = self.clock.seconds()

        def logout() -> None:
            _log.info(
                "manhole logout of {user} after {duration:.0f} s",
                user=name,
                duration=self.clock.seconds() - started,
            )

        return IConchUser, _Operator(name, self.namespace), logout


def _signature_refusal(credentials: Any) -> str | None:
    """Why a public-key login attempt uses a signature algorithm we refuse
    (None if it does not).  Twisted checks only that the signature verifies."""
    algorithm = credentials.algName
    if algorithm not in USER_SIGNATURE_ALGORITHMS:
        return f"signature algorithm {algorithm!r} is not accepted"
    try:
        key = keys.Key.fromString(credentials.blob)
    except (keys.BadKeyError, ValueError):
        return "not a public key"
    if algorithm not in key.supportedSignatureAlgorithms():
        return f"signature algorithm {algorithm!r} does not fit a {key.type()} key"
    if credentials.signature is not None:
        try:
            signed_with = getNS(credentials.signature)[0]
        except (struct.error, IndexError):
            return "malformed signature"
        if signed_with != algorithm:
            return f"signature made with {signed_with!r}, not {algorithm!r}"
    return None


class _LoggingKeyChecker(SSHPublicKeyChecker):
    """Refuses SHA-1 signatures; logs each successful login with the user
    name and key fingerprint (refusals at debug level)."""

    def requestAvatarId(self, credentials: Any) -> Any:
        user = credentials.username.decode("utf-8", "replace")
        refusal = _signature_refusal(credentials)
        if refusal is not None:
            _log.debug("manhole login as {user} refused: {reason}", user=user, reason=refusal)
            return defer.fail(UnauthorizedLogin(refusal))

        def logged(avatar_id: bytes) -> bytes:
            _log.info(
                "manhole login as {user} with key {fingerprint}",
                user=avatar_id.decode("utf-8", "replace"),
                fingerprint=_fingerprint(keys.Key.fromString(credentials.blob)),
            )
            return avatar_id

        def refused(failure: Failure) -> Failure:
            if failure.check(UnauthorizedLogin):
                _log.debug(
                    "manhole login as {user} refused: {reason}",
                    user=user,
                    reason=failure.getErrorMessage(),
                )
            return failure

        return super().requestAvatarId(credentials).addCallbacks(logged, refused)


@compat.conch_logger(_LibraryLogger())
class _UserAuthServer(userauth.SSHUserAuthServer):
    pass


@compat.conch_logger(_LibraryLogger())
class _Connection(connection.SSHConnection):
    pass


@implementer(IPushProducer)
class _ReadPause:
    """Stops reading from a peer while the output to it is backed up: a peer
    that sends requests (auth attempts, key exchanges) without reading the
    answers would otherwise make the server buffer them without bound."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    def pauseProducing(self) -> None:
        self._connection.pauseProducing()

    def resumeProducing(self) -> None:
        self._connection.resumeProducing()

    def stopProducing(self) -> None:
        pass  # the connection is closing anyway


@compat.conch_logger(_LibraryLogger())
class _ServerTransport(transport.SSHServerTransport):
    """The console's SSH server side: advertises the user-key signature
    algorithms it accepts and closes connections that do not log in within
    the factory's ``auth_timeout``."""

    factory: ConsoleFactory
    _auth_timer: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        assert self.transport is not None
        cast(IConsumer, self.transport).registerProducer(_ReadPause(self.transport), True)
        if self.factory.auth_timeout:
            self._auth_timer = self.factory.clock.callLater(
                self.factory.auth_timeout, self._auth_timed_out
            )

    def _peer(self) -> object:
        return self.transport.getPeer() if self.transport is not None else None

    def _auth_timed_out(self) -> None:
        _log.debug(
            "manhole connection from {peer} did not log in within {timeout} s",
            peer=self._peer(),
            timeout=self.factory.auth_timeout,
        )
        self.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, b"authentication timeout"
        )
        # A peer that does not read cannot keep the connection open.
        self._auth_timer = self.factory.clock.callLater(self.factory.auth_timeout, self._abort)

    def _abort(self) -> None:
        if self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()

    def setService(self, service: Any) -> None:
        super().setService(service)
        if service.name != userauth.SSHUserAuthServer.name:  # logged in
            cancel(self._auth_timer)

    def connectionLost(self, reason: Any = None) -> None:
        cancel(self._auth_timer)
        super().connectionLost(reason)

    def sendExtInfo(self, extensions: list[tuple[bytes, bytes]]) -> None:
        # Twisted advertises the host key's algorithms as server-sig-algs:
        # with an Ed25519 host key, OpenSSH then never offers an RSA key.
        accepted = b",".join(USER_SIGNATURE_ALGORITHMS)
        super().sendExtInfo(
            [(key, accepted if key == b"server-sig-algs" else value) for key, value in extensions]
        )

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        # A client's disconnect message, "disconnected by user" (11) after a
        # normal logout included: nothing for the operator's log.
        _log.debug(
            "manhole client {peer} disconnected: code {code}, {description}",
            peer=self._peer(),
            code=reasonCode,
            description=description[:200].decode("utf-8", "replace"),
        )


@compat.conch_logger(_LibraryLogger())
class ConsoleFactory(SSHFactory):
    """SSH server factory of the console: public-key logins only, then a
    Python prompt."""

    protocol = _ServerTransport
    services = {b"ssh-userauth": _UserAuthServer, b"ssh-connection": _Connection}
    noisy = False  # the port's "ConsoleFactory starting on" line says it

    def __init__(
        self, portal: Portal, host_key: keys.Key, auth_timeout: float, clock: IReactorTime
    ) -> None:
        self.portal = portal
        # Key objects, whatever SSHFactory's hints say.
        self.publicKeys = {host_key.sshType(): host_key.public()}  # type: ignore[dict-item]
        self.privateKeys = {host_key.sshType(): host_key}  # type: ignore[dict-item]
        self.auth_timeout = auth_timeout
        self.clock = clock

    def getPrimes(self) -> None:
        return None  # no group exchange: the fixed groups and curves suffice

    def buildProtocol(self, addr: Any) -> _ServerTransport:
        built: _ServerTransport = super().buildProtocol(addr)  # type: ignore[assignment]
        built.supportedPublicKeys = [
            name for name in built.supportedPublicKeys if name not in _SHA1_HOST_KEY_ALGORITHMS
        ]
        return built


def _fingerprint(key: keys.Key) -> str:
    """As ``ssh-keygen -l`` shows it."""
    return "SHA256:" + key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip("=")


def build_manhole_factory(
    namespace: Mapping[str, Any],
    authorized_keys: IAuthorizedKeysDB,
    host_key: keys.Key,
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
    clock: IReactorTime | None = None,
) -> ConsoleFactory:
    """An SSH server factory: public-key logins only, then a Python console."""
    if clock is None:
        from twisted.internet import reactor as clock  # type: ignore[assignment]
    assert clock is not None
    portal = Portal(_ConsoleRealm(namespace, clock), [_LoggingKeyChecker(authorized_keys)])
    return ConsoleFactory(portal, host_key, auth_timeout, clock)


def manhole_service(config: ManholeConfig, namespace: Mapping[str, Any]) -> IService:
    """The service that listens for admin console logins."""
    unfiltered = _unfiltered_classes()
    if unfiltered:
        _log.warn(
            "twisted.conch changed: the lines of {classes} are logged at their own level",
            classes=", ".join(unfiltered),
        )
    factory = build_manhole_factory(
        namespace,
        AuthorizedKeysFile(config.authorized_keys),
        config.host_key,
        config.auth_timeout,
    )
    from twisted.internet import reactor

    service = ListeningService(
        "--manhole",
        config.endpoint,
        factory,
        reactor,
        lambda address: f"admin console at {address_url(address, 'ssh', '')}",
    )
    service.setName("manhole")
    return service
