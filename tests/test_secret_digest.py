"""A bearer secret is kept as one digest, made in one place (``storage.digests.secret_digest``).

API tokens, docks' tokens, console sessions' cookies and read grants are found by the digest their
row holds; rows already stored hold SHA-256 in hex, so that form is pinned here, and every holder of
a secret takes it from the one function rather than a copy of its own.
"""

from __future__ import annotations

import hashlib

import accounts.service
import accounts.sessions
import devices.service
import ingest.read_grants
import ingest.viewing_admissions
from storage.digests import secret_digest


def test_a_secret_is_kept_as_its_sha256_in_hex() -> None:
    assert secret_digest("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    token = "a-token-é"
    assert secret_digest(token) == hashlib.sha256(token.encode()).hexdigest()


def test_every_holder_of_a_secret_digests_it_in_the_one_place() -> None:
    assert accounts.service.token_digest is secret_digest
    for module in (accounts.sessions, devices.service, ingest.read_grants, ingest.viewing_admissions):
        assert module.secret_digest is secret_digest, module.__name__
