"""Certificate reload on SIGHUP and when the certificate or key file changes."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from signaling.logs import ServerLogger
from signaling.ops.signals import install_handler
from signaling.wire.tls import ReloadableServerTLS, describe

_log = ServerLogger()

#: What identifies one version of a file: changed by an edit, a rename over
#: it or a symlink pointing elsewhere (certbot's live/ directory).
FileVersion = tuple[int, int, int] | None


def file_version(path: str) -> FileVersion:
    """The inode, size and modification time of ``path``; None if it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class CertificateReloader(Service):
    """Reload ``tls`` when its files change (polled every ``interval`` s on ``clock``).

    A poll reloads once per change it sees, so files that stay broken log
    one error, not one per poll.  ``interval`` 0 turns polling off.  With
    ``reactor`` given, SIGHUP reloads too.  Without ``tls`` there is nothing
    to reload, and SIGHUP is only logged: ``systemctl reload`` must never
    kill the server.
    """

    def __init__(
        self,
        tls: ReloadableServerTLS | None,
        interval: float,
        clock: IReactorTime,
        reactor: Any = None,
    ) -> None:
        self.tls = tls
        self.interval = interval
        self._clock = clock
        self._reactor = reactor
        self._seen = self._versions()
        self._poll: LoopingCall | None = None
        self._restore_handler: Callable[[], None] = lambda: None

    def _versions(self) -> tuple[FileVersion, FileVersion]:
        if self.tls is None:
            return (None, None)
        return (file_version(self.tls.cert_path), file_version(self.tls.key_path))

    def check_files(self) -> None:
        """Reload if either file changed since the last look."""
        versions = self._versions()
        if versions != self._seen and self.tls is not None:
            self._seen = versions
            _log.info("TLS certificate or key file changed; reloading")
            self.tls.reload()

    def _on_sighup(self, signum: int) -> None:
        if self.tls is None:
            _log.info("SIGHUP: no TLS certificate to reload")
            return
        _log.info("SIGHUP: reloading the TLS certificate")
        self._seen = self._versions()
        self.tls.reload()

    def _install_handler(self) -> None:
        if self.running:
            self._restore_handler = install_handler(self._reactor, signal.SIGHUP, self._on_sighup)

    def startService(self) -> None:
        super().startService()
        if self._reactor is not None:
            self._reactor.callWhenRunning(self._install_handler)
        if self.tls is None:
            return
        _log.info(
            "TLS certificate: {certificate}", certificate=describe(self.tls.current.certificate)
        )
        if self.interval > 0:
            self._poll = LoopingCall(self.check_files)
            self._poll.clock = self._clock
            self._poll.start(self.interval, now=False)

    def stopService(self) -> None:
        super().stopService()
        self._restore_handler()
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
