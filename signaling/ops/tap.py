"""``twistd signaling``: command-line options and the service they build."""

from __future__ import annotations

import os
import re
import signal
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import quoteStringArgument
from twisted.python import usage
from txaio import tx as txaio_twisted

from signaling import __version__
from signaling.access.ice import DEFAULT_TURN_TTL, IceServers, check_url, read_secret
from signaling.access.tokens import KeyFileError, TokenGate, read_public_key
from signaling.access.tokens import read_secret as read_token_secret
from signaling.admin import ROOM_CLOSED, Admin
from signaling.admin.manhole import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_HOST_KEY_PATH,
    ManholeConfig,
    manhole_config,
    manhole_service,
)
from signaling.core.access import Gate, Gates
from signaling.core.limits import (
    Limits,
    limit_options,
    parse_count,
    parse_positive_int,
    parse_seconds,
)
from signaling.logs import LEVELS, ServerLogger, set_level
from signaling.ops.listen import (
    Listener,
    ListeningService,
    address_url,
    check_endpoint,
    listening_service,
    plan_listeners,
)
from signaling.ops.reload import CertificateReloader
from signaling.ops.shutdown import GracefulShutdown
from signaling.ops.systemd import SystemdNotifier
from signaling.ops.workers import (
    STOP_GRACE,
    WorkerLink,
    WorkerRole,
    parse_workers,
    supervisor_service,
    worker_argv,
)
from signaling.web.site import build_metrics_site, listening_factory
from signaling.wire import compat
from signaling.wire.admission import raise_open_files_limit
from signaling.wire.protocol import SignalingFactory
from signaling.wire.tls import (
    INTERMEDIATE_CIPHERS,
    MINIMUM_VERSIONS,
    ReloadableServerTLS,
    TLSConfigError,
    check_ciphers,
)
from signaling.wire.tuning import native_speedups, tune_gc

_log = ServerLogger()
DEFAULT_PORT = 5000
DEFAULT_INTERFACE = "0.0.0.0"


def check_workers_share_rooms(options: Mapping[str, Any]) -> None:
    """UsageError if ``--workers`` above 1 comes without ``--redis``: the
    workers share rooms through Redis, or two clients of one room would meet
    only if the same worker accepted both."""
    if options["workers"] > 1 and not options.get("redis"):
        raise usage.UsageError(
            f"--workers {options['workers']} needs --redis: the workers share rooms "
            "through Redis, or clients of one room would land in different rooms"
        )


def check_webhook_url(option: str, url: str) -> None:
    """UsageError unless ``url`` is an http or https URL with a host."""
    parsed = urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise usage.UsageError(
            f"--{option} {url!r} is not an http:// or https:// URL, e.g. http://127.0.0.1:8000/auth"
        )


def _tls_version(value: str) -> str:
    if value not in MINIMUM_VERSIONS:
        raise ValueError(f"{value} is not one of {', '.join(MINIMUM_VERSIONS)}")
    return value


def _log_level(value: str) -> str:
    if value not in LEVELS:
        raise ValueError(f"{value} is not one of {', '.join(LEVELS)}")
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve WebRTC signaling (singo-compatible) over WebSocket at "
        "ws://INTERFACE:PORT/connect (wss:// with --tls-cert/--tls-key), with "
        "/healthz and /metrics on the same port. For the count and time "
        "limits, 0 turns the limit off."
    )

    optParameters = [
        ["port", "p", None, f"TCP port to listen on [default: {DEFAULT_PORT}].", int],
        [
            "interface",
            "i",
            None,
            f"Address to listen on (:: for all IPv6 and IPv4) [default: {DEFAULT_INTERFACE}].",
        ],
        [
            "backlog",
            None,
            4096,
            "Connections the kernel may queue before the server accepts them, "
            "at most net.core.somaxconn "
            "(for --port/--interface; --listen endpoints take backlog=N).",
            parse_positive_int,
        ],
        ["tls-cert", None, None, "PEM certificate chain (certbot's fullchain.pem): serve wss."],
        ["tls-key", None, None, "PEM private key of --tls-cert (certbot's privkey.pem)."],
        [
            "tls-min-version",
            None,
            None,
            "Oldest TLS version accepted: 1.2 or 1.3 [default: 1.2].",
            _tls_version,
        ],
        [
            "tls-ciphers",
            None,
            None,
            "OpenSSL cipher list for TLS 1.2 on every TLS listener "
            "[default: Mozilla's intermediate list: ECDHE/DHE with AES-GCM or ChaCha20].",
        ],
        [
            "tls-reload-interval",
            None,
            60.0,
            "Seconds between checks for a changed --tls-cert/--tls-key (0: only on SIGHUP).",
            parse_seconds,
        ],
        [
            "trust-proxy",
            None,
            0,
            "Number of reverse proxies in front whose X-Forwarded-For gives the client address.",
            parse_count,
        ],
        [
            "log-level",
            None,
            "info",
            "Least severe of the server's events to log: debug (adds every connect, "
            "join, leave and disconnect), info, warn or error.",
            _log_level,
        ],
        [
            "drain-delay",
            None,
            0.0,
            "Seconds to keep serving on SIGTERM/SIGINT with /healthz answering 503 and "
            "new WebSocket handshakes refused, before closing the clients "
            "(for load balancers to notice).",
            parse_seconds,
        ],
        [
            "shutdown-timeout",
            None,
            5.0,
            "Seconds to wait on SIGTERM/SIGINT for clients to close before dropping them.",
            parse_seconds,
        ],
        # One row for each limit, from its field of Limits.
        *([o.name, None, o.default, o.help, o.parse] for o in limit_options()),
        [
            "auth-secret",
            None,
            None,
            "File of the HS256 secret (at least 32 bytes; a trailing newline is dropped) "
            "with which room tokens are signed: every join then needs a valid token.",
        ],
        [
            "auth-public-key",
            None,
            None,
            "PEM public key (RSA: RS256; EC P-256, P-384, P-521: ES256, ES384, ES512) "
            "that checks the signature of "
            "room tokens: every join then needs a valid token.",
        ],
        [
            "auth-leeway",
            None,
            5.0,
            "Seconds of clock skew allowed when checking a room token's exp, nbf and iat.",
            parse_seconds,
        ],
        [
            "redis",
            None,
            None,
            "Share rooms with every server process using this Redis: "
            "redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] (rediss:// for TLS). "
            "Unset: rooms are in this process's memory alone.",
        ],
        [
            "redis-prefix",
            None,
            "signaling:",
            "Prefix of the Redis keys and channels (one cluster per prefix).",
        ],
        [
            "redis-timeout",
            None,
            5.0,
            "With --redis: seconds to connect to Redis, and that a reply may be "
            "overdue before the connection is dropped and made again (what waited "
            "fails with 'unavailable'); joins made at start wait as long for Redis.",
            parse_seconds,
        ],
        [
            "redis-max-backlog",
            None,
            16 * 1024 * 1024,
            "With --redis: bytes of relayed messages sent to Redis and not yet "
            "acknowledged beyond which relays to other processes get 'unavailable' "
            "(Redis is behind; what waits is held in memory).",
            parse_positive_int,
        ],
        [
            "node-timeout",
            None,
            5.0,
            "With --redis: seconds after which a server process that stopped "
            "refreshing its liveness key is declared dead and its clients are "
            "removed from their rooms (it refreshes every fifth of this).",
            parse_seconds,
        ],
        [
            "auth-webhook",
            None,
            None,
            "POST each join as JSON to this http(s) URL and let it in only if the "
            "reply says allowed (see README, Securing a deployment).",
        ],
        [
            "disconnect-webhook",
            None,
            None,
            "POST each leave (and closed connection) of a room member as JSON to this "
            "http(s) URL, without waiting for the answer.",
        ],
        [
            "webhook-timeout",
            None,
            5.0,
            "Seconds a webhook may take to answer; a join whose auth call takes "
            "longer gets 'unavailable'.",
            parse_seconds,
        ],
        [
            "webhook-max-pending",
            None,
            1000,
            "Auth calls in flight beyond which joins get 'unavailable' at once, and "
            "leave notices in flight beyond which they are dropped.",
            parse_positive_int,
        ],
        [
            "workers",
            None,
            1,
            "Processes serving the listening sockets, which a supervisor binds and "
            "shares: a number, or auto for one per core. 1 is a single process "
            "with no supervisor.",
            parse_workers,
        ],
        [
            "metrics-listen",
            None,
            None,
            "Serve /metrics on this endpoint (e.g. tcp:9100:interface=127.0.0.1) "
            "instead of the main port.",
        ],
        [
            "manhole",
            None,
            None,
            "Serve the SSH admin console on this endpoint, e.g. "
            "tcp:2222:interface=127.0.0.1 (off by default).",
        ],
        [
            "manhole-keys",
            None,
            None,
            "authorized_keys file of the public keys that may log in to the admin console.",
        ],
        [
            "manhole-host-key",
            None,
            DEFAULT_HOST_KEY_PATH,
            "The admin console's SSH host key; generated (mode 0600) if missing.",
        ],
        [
            "manhole-auth-timeout",
            None,
            DEFAULT_AUTH_TIMEOUT,
            "Seconds an admin console connection may take to log in before it is closed.",
            parse_seconds,
        ],
        [
            "turn-secret",
            None,
            None,
            "File holding the secret shared with the TURN server (coturn's "
            "static-auth-secret), for --turn credentials; needed with --turn.",
        ],
        [
            "turn-ttl",
            None,
            None,
            "Seconds the TURN credentials a client gets in joined stay valid "
            f"[default: {DEFAULT_TURN_TTL}].",
            parse_positive_int,
        ],
    ]

    optFlags = [
        [
            "no-demo",
            None,
            "Serve only the WebSocket endpoint: no demo page at / or files under /static/.",
        ],
        [
            "hide-version",
            None,
            "Name no versions: 'Server: signaling' and no version in /healthz.",
        ],
        [
            "degraded-503",
            None,
            "With --redis: /healthz answers 503 (not 200) while Redis cannot be reached, "
            "so that a load balancer sends new clients to another process.",
        ],
        [
            "manhole-remote",
            None,
            "Allow --manhole to accept connections from other hosts (not only loopback).",
        ],
    ]

    # What postOptions derives from the options, as attributes; the dict
    # holds only what the command line gave.
    limits: Limits
    listeners: list[Listener]
    tls: ReloadableServerTLS | None = None
    manhole: ManholeConfig | None = None
    #: The parsed --redis URL (a RedisAddress), if given.
    redis_address: Any = None
    #: The key that checks room tokens and its algorithm (None: no tokens).
    token_key: tuple[Any, str] | None = None
    #: With --workers above 1, set in a worker (None in the supervisor).
    worker: WorkerRole | None = None
    #: The arguments after ``signaling``, which a worker gets too.
    argv: list[str]
    #: The contents of --turn-secret, if given.
    turn_secret: bytes | None = None

    def __init__(self) -> None:
        super().__init__()
        self["allowed-origin"] = []
        self["listen"] = []
        self["listen-tls"] = []
        self["stun"] = []
        self["turn"] = []
        self["allow-anonymous-room"] = []

    def opt_listen(self, description: str) -> None:
        """Serve ws on this Twisted endpoint (tcp6:5000, tcp:5000:interface=127.0.0.1,
        unix:PATH, systemd:domain=INET:name=NAME, ssl:...); repeatable; replaces
        --port/--interface."""
        self["listen"].append(description)

    def opt_listen_tls(self, description: str) -> None:
        """Serve wss on this endpoint with --tls-cert/--tls-key; repeatable."""
        self["listen-tls"].append(description)

    def opt_stun(self, url: str) -> None:
        """A STUN server for clients' ICE (stun:HOST[:PORT] or stuns:...), sent
        in joined as ice_servers; repeatable."""
        try:
            check_url("stun", url)
        except ValueError as e:
            raise usage.UsageError(f"--stun: {e}") from None
        self["stun"].append(url)

    def opt_turn(self, url: str) -> None:
        """A TURN server for clients' ICE (turn:HOST[:PORT][?transport=udp|tcp]
        or turns:...), sent in joined with credentials from --turn-secret;
        repeatable."""
        try:
            check_url("turn", url)
        except ValueError as e:
            raise usage.UsageError(f"--turn: {e}") from None
        self["turn"].append(url)

    def opt_allow_anonymous_room(self, pattern: str) -> None:
        """With --auth-secret/--auth-public-key: rooms matching this pattern
        (* and ? are wildcards) may be joined without a token; repeatable."""
        self["allow-anonymous-room"].append(pattern)

    def opt_addr(self, value: str) -> None:
        """Alias of --interface."""
        self["interface"] = value

    def opt_allowed_origin(self, pattern: str) -> None:
        """Allow browsers from this Origin (repeatable; * is a wildcard,
        e.g. https://*.example.com). Unset: every Origin is allowed."""
        if not re.match(r"^(\*|[a-zA-Z][a-zA-Z0-9+.-]*)://[^/]+$", pattern):
            raise usage.UsageError(
                f"--allowed-origin {pattern!r} is not an origin pattern like "
                "https://app.example.com or https://*.example.com"
            )
        self["allowed-origin"].append(pattern)

    def opt_version(self) -> None:
        """Print the version and exit."""
        print(f"signaling {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: Any = None) -> None:
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:  # not under twistd
                raise
            # One line, and a failing exit status on every Twisted: twistd
            # before 26.4 prints its whole usage and exits 0, which a
            # service manager takes for a clean stop.
            raise SystemExit(f"twistd signaling: {e}") from None

    def postOptions(self) -> None:
        if self["port"] is not None and not 0 <= self["port"] <= 65535:
            raise usage.UsageError(f"--port must be between 0 and 65535, not {self['port']}")
        if self["interface"] == "":
            raise usage.UsageError("--interface must not be empty")
        if self["ping-interval"] and not self["ping-timeout"]:
            raise usage.UsageError("--ping-timeout must be above 0 when pings are on")
        self._check_workers()
        self._check_ice_servers()
        self.manhole = manhole_config(
            self["manhole"],
            self["manhole-keys"],
            self["manhole-host-key"],
            bool(self["manhole-remote"]),
            self["manhole-auth-timeout"],
        )
        if self["redis"] is not None:
            self.redis_address = _redis_address(self["redis"])
        elif self["degraded-503"]:
            raise usage.UsageError("--degraded-503 needs --redis")
        if self["redis"] is not None and not (self["node-timeout"] and self["redis-timeout"]):
            raise usage.UsageError("--node-timeout and --redis-timeout must be above 0")
        for option in ("auth-webhook", "disconnect-webhook"):
            if self[option] is not None:
                check_webhook_url(option, self[option])
        if not self["webhook-timeout"]:
            raise usage.UsageError("--webhook-timeout must be above 0")
        self.token_key = _token_key(self)
        if self["tls-ciphers"] is not None:
            try:
                check_ciphers(self["tls-ciphers"])
            except TLSConfigError as e:
                raise usage.UsageError(f"--tls-ciphers: {e}") from None
        self.limits = Limits(
            allowed_origins=tuple(self["allowed-origin"]),
            **{option.field: self[option.name] for option in limit_options()},
        )
        # A worker's sockets come from the supervisor, which checked the endpoints.
        self.listeners = plan_listeners(self, self.listen_description, check=self.worker is None)
        if self["workers"] > 1 and self.worker is None:
            self._check_sharing()
        if self["metrics-listen"]:
            check_endpoint("--metrics-listen", self["metrics-listen"])
        self.tls = None
        if any(listener.tls for listener in self.listeners):
            try:
                self.tls = ReloadableServerTLS(
                    self["tls-cert"],
                    self["tls-key"],
                    MINIMUM_VERSIONS[self["tls-min-version"] or "1.2"],
                    self.tls_ciphers,
                )
            except TLSConfigError as e:
                raise usage.UsageError(f"--tls-cert/--tls-key: {e}") from None

    def _check_ice_servers(self) -> None:
        """--turn, --turn-secret and --turn-ttl come together; read the secret."""
        if self["turn"] and self["turn-secret"] is None:
            raise usage.UsageError(
                "--turn needs --turn-secret FILE: the secret shared with the TURN server "
                "(coturn's static-auth-secret), from which each client's credentials are made"
            )
        if not self["turn"]:
            for option in ("turn-secret", "turn-ttl"):
                if self[option] is not None:
                    raise usage.UsageError(
                        f"--{option} needs --turn URL: the TURN server the credentials are for"
                    )
            return
        try:
            self.turn_secret = read_secret(self["turn-secret"])
        except ValueError as e:
            raise usage.UsageError(f"--turn-secret: {e}") from None

    def _check_workers(self) -> None:
        """Refuse what ``--workers`` above 1 cannot do; note whether this
        process is one of the workers."""
        try:
            # Even if "auto" counted other cores here than in the supervisor.
            self.worker = WorkerRole.from_environ(os.environ)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        workers = self["workers"]
        if workers == 1 and self.worker is None:
            return
        for option, why in (
            (
                "metrics-listen",
                "each worker counts only its own clients, and one endpoint would answer "
                "with the counters of whichever worker accepted the scrape",
            ),
            (
                "manhole",
                "the admin console sees and acts on one process's clients and rooms, and "
                "each worker has its own",
            ),
        ):
            if self[option]:
                raise usage.UsageError(
                    f"--{option} cannot be combined with --workers {workers}: {why}"
                )
        twistd = getattr(self, "parent", None) or {}
        if twistd.get("chroot"):
            raise usage.UsageError(
                f"--chroot cannot be combined with --workers {workers}: the workers are "
                "started from this Python and twistd, outside the new root"
            )
        check_workers_share_rooms(self)

    def _check_sharing(self) -> None:
        """UsageError if this Twisted lacks what sharing sockets with workers needs."""
        missing = compat.missing_for_shared_sockets()
        if any(listener.description.split(":", 1)[0] == "ssl" for listener in self.listeners):
            missing += compat.problems().get("ssl: endpoints", [])
        if missing:
            raise usage.UsageError(
                f"--workers {self['workers']}: this Twisted lacks what sharing listening "
                f"sockets with workers needs ({', '.join(missing)})"
            )

    @property
    def tls_ciphers(self) -> str:
        return self["tls-ciphers"] or INTERMEDIATE_CIPHERS

    @property
    def listen_description(self) -> str:
        """The Twisted endpoint description for --port/--interface."""
        port = DEFAULT_PORT if self["port"] is None else self["port"]
        interface = self["interface"] or DEFAULT_INTERFACE
        return f"tcp:{port}:interface={quoteStringArgument(interface)}:backlog={self['backlog']}"


def _token_key(options: Options) -> tuple[Any, str] | None:
    """The key of --auth-secret or --auth-public-key and its algorithm."""
    secret, public = options["auth-secret"], options["auth-public-key"]
    if secret is not None and public is not None:
        raise usage.UsageError(
            "--auth-secret and --auth-public-key cannot be combined: room tokens "
            "are checked with one key"
        )
    if secret is None and public is None:
        if options["allow-anonymous-room"]:
            raise usage.UsageError(
                "--allow-anonymous-room needs --auth-secret or --auth-public-key: "
                "without them every room may be joined without a token"
            )
        return None
    try:
        if secret is not None:
            return read_token_secret(secret), "HS256"
        return read_public_key(public)
    except KeyFileError as e:
        option = "--auth-secret" if secret is not None else "--auth-public-key"
        raise usage.UsageError(f"{option}: {e}") from None


def _redis_address(url: str) -> Any:
    try:
        from signaling.backplane.redis import parse_url
    except ImportError as e:
        raise usage.UsageError(
            f"--redis needs the redis extra ({e}): pip install 'signaling-server[redis]' "
            "(from the source directory: pip install '.[redis]')"
        ) from None
    try:
        return parse_url(url)
    except ValueError as e:
        raise usage.UsageError(f"--redis: {e}") from None


#: Close code for clients of a process that the others declared dead.
CLOSE_EVICTED = 1012


def _evict(members: list[Any]) -> None:
    """Close the clients of a process the others declared dead: they are no
    longer in their rooms, and must reconnect (to any process)."""
    for member in members:
        member.close(CLOSE_EVICTED, "server restarting; reconnect")


def _close_room(members: list[Any], reason: str) -> None:
    """Close this process's members of a room the operator closed (on any process)."""
    for member in members:
        member.close(ROOM_CLOSED, reason)


def _shared_rooms(config: Options, reactor: Any) -> tuple[Any, Any]:
    """The RedisRooms of --redis and the service that starts and stops them."""
    from signaling.backplane.rooms import RedisRooms, RedisRoomsService

    limits = config.limits
    rooms = RedisRooms(
        config.redis_address,
        reactor,
        prefix=config["redis-prefix"],
        max_room_size=limits.max_room_size,
        max_rooms=limits.max_rooms,
        ttl=config["node-timeout"],
        heartbeat=config["node-timeout"] / 5,
        reply_timeout=config["redis-timeout"],
        max_backlog=config["redis-max-backlog"],
        on_evicted=_evict,
        on_room_closed=_close_room,
    )
    return rooms, RedisRoomsService(rooms)


def _move_sessions(hub: Any, rooms: Any) -> None:
    """A resume on another process moves the session there (see
    signaling.core.resume and RedisRooms)."""
    from signaling.core import resume

    hub.session_mover = rooms
    rooms.hand_over = lambda token: resume.hand_over(hub, token)
    rooms.arrive = lambda moving, room: resume.arrive(hub, moving, room)


class GatesService(Service):
    """Closes the gates that hold connections (a webhook's) at shutdown."""

    def __init__(self, gates: list[Any]) -> None:
        self.gates = gates

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        closing = [gate.close() for gate in self.gates if hasattr(gate, "close")]
        return DeferredList(closing)


def _gates(config: Options, factory: SignalingFactory, reactor: Any) -> list[Gate]:
    """The gates every join passes, in order: room tokens, then the
    webhook (none: access control is off)."""
    gates: list[Gate] = []
    if config.token_key is not None:
        key, algorithm = config.token_key
        gates.append(
            TokenGate(
                key,
                algorithm,
                reactor,
                leeway=config["auth-leeway"],
                anonymous_rooms=config["allow-anonymous-room"],
            )
        )
    if config["auth-webhook"] or config["disconnect-webhook"]:
        # Imported only here: a server without webhooks does not load treq.
        from signaling.access.webhook import WebhookGate

        hub = factory.hub
        gates.append(
            WebhookGate(
                reactor,
                auth_url=config["auth-webhook"],
                disconnect_url=config["disconnect-webhook"],
                timeout=config["webhook-timeout"],
                max_pending=config["webhook-max-pending"],
                stats=hub.stats,
                log=_log,
                log_budget=hub.log_budget,
            )
        )
    return gates


def makeService(config: Options, reactor: Any = None) -> MultiService:
    """Build the signaling service from parsed options."""
    if reactor is None:
        from twisted.internet import reactor
    level = config["log-level"]
    set_level(LEVELS[level])
    # Autobahn's lines (a refused handshake, ...) follow, but never its
    # debug output, which describes every frame.
    txaio_twisted.set_global_log_level("info" if level == "debug" else level)
    worker = config.worker
    if config["workers"] > 1 and worker is None:
        return _supervisor(config, reactor)
    tune_gc()
    compat.skip_debug_formatting()
    before, after = raise_open_files_limit()
    if after != before:
        _log.info("open files limit raised from {before} to {after}", before=before, after=after)
    else:
        _log.info("open files limit: {limit}", limit=after)
    speedups = native_speedups()
    if all(speedups.values()):
        _log.info("native speedups active: {speedups}", speedups=", ".join(speedups))
    else:
        missing = ", ".join(name for name, active in speedups.items() if not active)
        _log.warn(
            "native speedups missing ({missing}): expect much lower throughput", missing=missing
        )
    top = MultiService()
    rooms = None
    if config.redis_address is not None:
        # First in, so last out: clients have left their rooms by then.
        rooms, rooms_service = _shared_rooms(config, reactor)
        rooms_service.setServiceParent(top)
    factory = SignalingFactory(
        clock=reactor, limits=config.limits, rooms=rooms, trust_proxy=config["trust-proxy"]
    )
    factory.hub.degraded_status = 503 if config["degraded-503"] else 200
    if rooms is not None:
        _move_sessions(factory.hub, rooms)
    gates = _gates(config, factory, reactor)
    if gates:
        factory.hub.gate = gates[0] if len(gates) == 1 else Gates(gates)
        # In before the drain, so out after it: the leaves of the clients it
        # closes are told before the gates let go of their connections.
        GatesService(gates).setServiceParent(top)
    if config["stun"] or config["turn"]:
        factory.hub.ice_servers = IceServers(
            reactor.seconds,
            config["stun"],
            config["turn"],
            config.turn_secret,
            config["turn-ttl"] or DEFAULT_TURN_TTL,
        )
        _log.info(
            "clients get ICE servers in joined: {urls}{credentials}",
            urls=", ".join(config["stun"] + config["turn"]),
            credentials=(
                f" (TURN credentials valid {config['turn-ttl'] or DEFAULT_TURN_TTL} s)"
                if config["turn"]
                else ""
            ),
        )
    factory.fast_paths = compat.check()
    if config["hide-version"]:
        factory.hide_versions()
    # Services stop in reverse order: the listeners before the drain.
    # A worker leaves SIGINT to its supervisor (see WorkerLink).
    GracefulShutdown(
        factory.hub,
        config["shutdown-timeout"],
        reactor,
        reactor,
        drain_delay=config["drain-delay"],
        signals=(signal.SIGTERM,) if worker else (signal.SIGTERM, signal.SIGINT),
    ).setServiceParent(top)
    metrics_listen = config["metrics-listen"]
    serving = listening_factory(
        factory,
        serve_metrics=not metrics_listen,
        demo=not config["no-demo"],
        worker=worker.index if worker else None,
    )
    if worker is not None and len(worker.sockets) != len(config.listeners):
        raise SystemExit(
            f"twistd signaling: a worker got {len(worker.sockets)} sockets for "
            f"{len(config.listeners)} listeners"
        )
    for index, listener in enumerate(config.listeners):
        listening_service(
            listener,
            serving,
            config.tls,
            reactor,
            factory.admission,
            demo=not config["no-demo"],
            ciphers=config.tls_ciphers,
            shared_fd=worker.sockets[index] if worker else None,
        ).setServiceParent(top)
    if metrics_listen:
        ListeningService(
            "--metrics-listen",
            metrics_listen,
            build_metrics_site(factory),
            reactor,
            lambda address: f"metrics at {address_url(address, 'http', '/metrics')}",
        ).setServiceParent(top)
    interval = config["tls-reload-interval"]
    CertificateReloader(config.tls, interval, reactor, reactor).setServiceParent(top)
    if config.manhole is not None:
        manhole_service(config.manhole, Admin(factory).namespace()).setServiceParent(top)
    # Ready once the shared rooms are reached (or have had their chance).
    before_ready = rooms.started if rooms is not None else None
    if worker is not None:
        WorkerLink(worker, reactor, before_ready=before_ready).setServiceParent(top)
    else:
        SystemdNotifier(reactor, before_ready=before_ready).setServiceParent(top)
    return top


def _supervisor(config: Options, reactor: Any) -> MultiService:
    """The ``--workers`` supervisor's service (see signaling.ops.workers)."""
    count = config["workers"]
    twistd = getattr(config, "parent", None) or {}
    top = MultiService()
    supervisor_service(
        count,
        config.listeners,
        worker_argv(twistd, config.argv),
        reactor,
        demo=not config["no-demo"],
        stop_timeout=config["drain-delay"] + config["shutdown-timeout"] + STOP_GRACE,
    ).setServiceParent(top)
    return top
