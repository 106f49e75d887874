"""A signed tree head: the service's statement that the custody ledger's first ``tree_size`` entries
have a given Merkle root (RFC 9162). Pure, so the offline package verifier can check one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .canonical import canonical_json, rfc3339
from .keys import ServiceKey, verify_signature

FORMAT = "evidence-tree-head/1"


@dataclass(frozen=True)
class TreeHead:
    """A signed statement: the ledger's first ``tree_size`` entries have Merkle root ``root_hash``."""

    tree_size: int
    root_hash: str  # hex
    timestamp: str
    key_id: str
    signature: str = ""

    def body(self) -> bytes:
        return canonical_json(
            {
                "format": FORMAT,
                "tree_size": self.tree_size,
                "root_hash": self.root_hash,
                "timestamp": self.timestamp,
                "key_id": self.key_id,
            }
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "timestamp": self.timestamp,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TreeHead:
        if d.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        return cls(
            int(d["tree_size"]),
            str(d["root_hash"]),
            str(d["timestamp"]),
            str(d["key_id"]),
            str(d["signature"]),
        )

    def signed_by(self, public: Ed25519PublicKey | bytes) -> bool:
        return verify_signature(public, self.signature, self.body())


def sign_tree_head(key: ServiceKey, tree_size: int, root: bytes, when: datetime | None = None) -> TreeHead:
    unsigned = TreeHead(tree_size, root.hex(), rfc3339(when or datetime.now(UTC)), key.key_id)
    return TreeHead(
        unsigned.tree_size, unsigned.root_hash, unsigned.timestamp, unsigned.key_id, key.sign(unsigned.body())
    )
