"""The demo video room and the browser client, served from the package's static files."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from typing import Any

from twisted.web.pages import errorPage, notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request

STATIC_PATH = b"static"

_CONTENT_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}

# The page itself is revalidated on every load (cheap with its ETag), so a
# new release is picked up at once; the files it loads may be reused briefly.
PAGE_CACHE_CONTROL = b"no-cache"
ASSET_CACHE_CONTROL = b"public, max-age=300"

_PAGE_SECURITY_POLICY = (
    b"default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    b"object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


@dataclass(frozen=True)
class StaticFile:
    """One file held in memory with the headers it is served with."""

    body: bytes
    content_type: bytes
    cache_control: bytes
    etag: bytes


def load_static_files() -> dict[str, StaticFile]:
    """Read every servable file of ``signaling/web/static`` (package data)."""
    files = {}
    for entry in resources.files("signaling.web").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if suffix not in _CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        files[entry.name] = StaticFile(
            body=body,
            content_type=_CONTENT_TYPES[suffix],
            cache_control=PAGE_CACHE_CONTROL if suffix == ".html" else ASSET_CACHE_CONTROL,
            etag=b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"',
        )
    return files


class StaticFileResource(Resource):
    """Serves one :class:`StaticFile` to GET and HEAD, honouring If-None-Match."""

    isLeaf = True

    def __init__(self, file: StaticFile) -> None:
        super().__init__()
        self.file = file

    def render(self, request: Request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return errorPage(405, "Method Not Allowed", "Use GET or HEAD.").render(request)
        return super().render(request)

    def render_GET(self, request: Request) -> bytes:
        file = self.file
        request.setHeader(b"content-type", file.content_type)
        request.setHeader(b"cache-control", file.cache_control)
        request.setHeader(b"x-content-type-options", b"nosniff")
        if file.content_type.startswith(b"text/html"):
            request.setHeader(b"content-security-policy", _PAGE_SECURITY_POLICY)
        if request.setETag(file.etag):
            return b""  # 304 Not Modified
        request.setHeader(b"content-length", b"%d" % len(file.body))
        return file.body


class StaticDirectory(Resource):
    """``/static/NAME`` for each loaded file; anything else is 404."""

    def __init__(self, files: dict[str, StaticFile]) -> None:
        super().__init__()
        self.files = {name.encode(): StaticFileResource(f) for name, f in files.items()}

    def getChild(self, path: bytes, request: Request) -> IResource:
        if request.postpath:
            return notFound()
        return self.files.get(path) or notFound()

    def render(self, request: Request) -> Any:
        return notFound().render(request)
