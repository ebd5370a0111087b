"""Client ids (:mod:`signaling.core.ids`)."""

from __future__ import annotations

import base64
import os
import re

from signaling.core.ids import _ClientIds, new_client_id

URL_SAFE = re.compile(r"\A[A-Za-z0-9_-]+\Z")


def test_new_client_id_url_safe_and_long_enough() -> None:
    for _ in range(200):
        cid = new_client_id()
        assert isinstance(cid, str)
        assert URL_SAFE.match(cid), cid
        assert len(cid) >= 16  # 16 base64url chars = 96 bits


def test_new_client_id_unique() -> None:
    ids = [new_client_id() for _ in range(1000)]
    assert len(set(ids)) == 1000


def test_new_client_id_uses_whole_alphabet() -> None:
    # Random ids drawn from base64url should, over 1000 ids, use (nearly) all
    # 64 symbols; a constant prefix or a tiny alphabet would fail this.
    ids = [new_client_id() for _ in range(1000)]
    chars = set("".join(ids))
    assert len(chars) >= 60
    assert len({cid[:4] for cid in ids}) > 990


def test_new_client_id_carries_128_random_bits() -> None:
    raw = base64.urlsafe_b64decode(new_client_id() + "==")
    assert len(raw) == 16


def test_new_client_ids_do_not_repeat_across_refills() -> None:
    ids = [new_client_id() for _ in range(3 * 256 + 7)]
    assert len(set(ids)) == len(ids)


def test_forked_child_draws_fresh_ids() -> None:
    ids = _ClientIds()
    ids()  # the parent's buffer now holds ids to come
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its next id, then leave at once
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child != ids()
