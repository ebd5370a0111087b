"""Programs the tests drive (curl, ssh, nginx, ...): found on PATH, or the test
fails under CI=true (CI installs them) and is skipped elsewhere."""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Fail under CI (it must run every test), skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run this test")
    pytest.skip(reason)


def require_program(name: str, package: str) -> str:
    """The path of ``name``; fails or skips naming the Debian ``package`` that brings it."""
    path = shutil.which(name)
    if path is None:
        missing(f"no {name} on PATH: apt-get install {package}")
    return path
