"""What the service publishes to anyone, without an account: the key that signs its custody record and
export packages, so that a recipient can check a package against a key obtained from the trust itself
rather than the copy inside the package (which a forger would replace with their own)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from accounts.access import services
from chain_of_custody.core import CoreServices
from chain_of_custody.keys import SIGNING_KEY_PATH, published_key

router = APIRouter(tags=["custody"])


@router.get(SIGNING_KEY_PATH)
def signing_key(s: CoreServices = Depends(services)) -> dict[str, str]:
    """Public on purpose: a public key is no secret, and a recipient with no account (the police, a
    defence expert) must be able to fetch it from the trust's own address to compare fingerprints."""
    return published_key(s.key)
