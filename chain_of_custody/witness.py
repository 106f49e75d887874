"""A witness of the custody log: a second party (another trust, the police) that fetches the service's
signed tree heads, checks each is consistent with the last one it countersigned (RFC 9162 section
2.1.4.2), and countersigns it with a key of its own, keeping its own record.

Once a tree head is countersigned, rewriting history would need the witness's key too: a log cut
back or forked by whoever holds the service key no longer extends what the witness signed, and the
witness refuses it. Runs anywhere with HTTP access to the service; holds no part of the service.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .canonical import rfc3339
from .keys import SIGNING_KEY_PATH, public_key_fingerprint, raw_public_key
from .merkle import verify_consistency
from .signed_tree_head import TreeHead

KEY_FILE = "witness_key.pem"
RECORD_FILE = "cosigned.jsonl"


class WitnessRefused(Exception):
    """The service's log is not one the witness can countersign: the reason says why."""


@dataclass(frozen=True)
class Cosigned:
    head: TreeHead
    witness_fingerprint: str
    signature: str  # hex Ed25519 signature of the tree head's signed body by the witness key
    at: str
    previous_size: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "tree_head": self.head.to_json(),
            "witness_fingerprint": self.witness_fingerprint,
            "signature": self.signature,
            "cosigned_at": self.at,
            "previous_size": self.previous_size,
        }


def _witness_key(state: Path) -> Ed25519PrivateKey:
    path = state / KEY_FILE
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        if not isinstance(key, Ed25519PrivateKey):
            raise WitnessRefused(f"{path} is not an Ed25519 private key")
        return key
    state.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    return key


def last_cosigned(state: Path) -> TreeHead | None:
    """The last tree head this witness countersigned, from its own record."""
    path = state / RECORD_FILE
    if not path.exists():
        return None
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    return TreeHead.from_json(json.loads(lines[-1])["tree_head"]) if lines else None


def witness(
    url: str, token: str, key_fingerprint: str, state: Path, client: httpx.Client | None = None
) -> Cosigned:
    """Fetch the service's newest tree head, check it, countersign it and record it in ``state``.

    ``key_fingerprint``: the service key's fingerprint as the witness was given it out of band.
    Raises WitnessRefused when the key, the signature or the consistency with the last countersigned
    head is wrong; nothing is recorded then."""
    http = client or httpx.Client(timeout=30)
    base = url.rstrip("/")
    try:
        published = http.get(base + SIGNING_KEY_PATH)
        published.raise_for_status()
        raw = raw_public_key(str(published.json()["public_key_b64"]))
        if raw is None or public_key_fingerprint(raw) != key_fingerprint.replace(":", "").lower():
            raise WitnessRefused(
                "the service's signing key is not the one whose fingerprint the witness holds"
            )
        auth = {"Authorization": f"Bearer {token}"}
        r = http.get(base + "/api/v1/custody/tree-head", headers=auth)
        r.raise_for_status()
        head = TreeHead.from_json(r.json())
        if not head.signed_by(raw):
            raise WitnessRefused(
                f"the tree head of {head.tree_size} entries is not signed by the service key"
            )
        previous = last_cosigned(state)
        if previous is not None:
            if head.tree_size < previous.tree_size:
                raise WitnessRefused(
                    f"the log shrank from {previous.tree_size} entries (countersigned {previous.timestamp}) "
                    f"to {head.tree_size}: entries were removed"
                )
            if head.tree_size == previous.tree_size:
                if head.root_hash != previous.root_hash:
                    raise WitnessRefused(
                        f"the log of {head.tree_size} entries has root {head.root_hash}, but the witness "
                        f"countersigned {previous.root_hash} for the same size: history was rewritten"
                    )
            else:
                p = http.get(
                    base + "/api/v1/custody/consistency",
                    params={"first": previous.tree_size, "second": head.tree_size},
                    headers=auth,
                )
                p.raise_for_status()
                path = [bytes.fromhex(h) for h in p.json()["path"]]
                if not verify_consistency(
                    previous.tree_size,
                    head.tree_size,
                    path,
                    bytes.fromhex(previous.root_hash),
                    bytes.fromhex(head.root_hash),
                ):
                    raise WitnessRefused(
                        f"the log of {head.tree_size} entries does not extend the one of {previous.tree_size} "
                        f"entries the witness countersigned ({previous.timestamp}): history was rewritten"
                    )
    except (httpx.HTTPError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, WitnessRefused):
            raise
        raise WitnessRefused(f"the service did not answer as a custody log does: {exc}") from None
    finally:
        if client is None:
            http.close()
    key = _witness_key(state)
    own = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = Cosigned(
        head,
        public_key_fingerprint(own),
        key.sign(head.body()).hex(),
        rfc3339(datetime.now(UTC)),
        previous.tree_size if previous else None,
    )
    with open(state / RECORD_FILE, "a") as f:
        f.write(json.dumps(record.to_json(), sort_keys=True) + "\n")
    return record
