"""The Merkle tree of RFC 9162 (Certificate Transparency 2.0), section 2.1: hashes, inclusion and
consistency proofs, and their verification. Pure: ``hashlib`` and nothing of ours.

The custody ledger's entries are its leaves, in sequence order, so that a signed tree head over
``n`` entries fixes all of them, and any later tree head can be proven to extend it. The reference
functions (``mth``, ``path``, ``proof``) follow the RFC's recursive definitions word for word; the
verifiers follow its numbered algorithms step by step (sections 2.1.3.2 and 2.1.4.2); ``MerkleTree``
gives the same answers from levels kept in memory, fast enough for a ledger of millions of entries.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d(0)}) = SHA-256(0x00 || d(0))."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k: the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


# -- section 2.1.1, 2.1.3.1 and 2.1.4.1, as written (over leaf hashes) ----------------------------


def mth(leaves: Sequence[bytes]) -> bytes:
    """MTH(D[n]) over leaf hashes: the empty hash, the leaf, or the node over the split at k."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = _split(n)
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PATH(m, D[n]): the inclusion proof of leaf m."""
    n = len(leaves)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def _subproof(m: int, leaves: Sequence[bytes], whole: bool) -> list[bytes]:
    n = len(leaves)
    if m == n:
        return [] if whole else [mth(leaves)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, leaves[:k], whole), mth(leaves[k:])]
    return [*_subproof(m - k, leaves[k:], False), mth(leaves[:k])]


def proof(m: int, leaves: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]) = SUBPROOF(m, D[n], true): that the tree of the first m leaves is a prefix."""
    if not 0 < m <= len(leaves):
        raise ValueError(f"no consistency proof from {m} to {len(leaves)} leaves")
    return _subproof(m, leaves, True)


# -- verification: section 2.1.3.2 and 2.1.4.2 -----------------------------------------------------


def _lsb(x: int) -> bool:
    return bool(x & 1)


def verify_inclusion(
    leaf_index: int, tree_size: int, leaf: bytes, inclusion_path: Sequence[bytes], root: bytes
) -> bool:
    """Section 2.1.3.2: does ``inclusion_path`` prove leaf hash ``leaf`` at ``leaf_index`` under ``root``?"""
    # 1. leaf_index must be inside the tree.
    if leaf_index >= tree_size or leaf_index < 0:
        return False
    # 2. fn is the leaf index, sn the last index of the tree.
    fn, sn = leaf_index, tree_size - 1
    # 3. r starts as the leaf hash.
    r = leaf
    # 4. for each value p of the path:
    for p in inclusion_path:
        # a. a path longer than the tree is tall fails.
        if sn == 0:
            return False
        # b. p is a left sibling when fn is odd, or fn is the last node of its level.
        if _lsb(fn) or fn == sn:
            r = node_hash(p, r)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        # c. up one level.
        fn >>= 1
        sn >>= 1
    # 5. the path must reach the top, and the result must be the root.
    return sn == 0 and r == root


def verify_consistency(
    first: int, second: int, consistency_path: Sequence[bytes], first_hash: bytes, second_hash: bytes
) -> bool:
    """Section 2.1.4.2: does ``consistency_path`` prove the tree of ``first`` leaves (``first_hash``)
    is a prefix of the tree of ``second`` leaves (``second_hash``)?"""
    if first == second:  # the same tree: no proof, the same root (section 2.1.4.1, m = n)
        return not consistency_path and first_hash == second_hash
    if first == 0:  # the empty tree is a prefix of every tree
        return not consistency_path and first_hash == EMPTY_ROOT
    if not 0 < first < second:
        return False
    # 1. an empty path fails.
    if not consistency_path:
        return False
    path_ = list(consistency_path)
    # 2. when first is an exact power of two, its root is the first value of the path.
    if first & (first - 1) == 0:
        path_.insert(0, first_hash)
    # 3. fn and sn are the last indices of the two trees.
    fn, sn = first - 1, second - 1
    # 4. right-shift both until fn's lowest bit is clear.
    while _lsb(fn):
        fn >>= 1
        sn >>= 1
    # 5. both running hashes start from the first value.
    fr = sr = path_[0]
    # 6. for each subsequent value c:
    for c in path_[1:]:
        # a. a path longer than the tree is tall fails.
        if sn == 0:
            return False
        # b. c is a left sibling of both trees, or a right sibling in the second tree only.
        if _lsb(fn) or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not _lsb(fn):
                while not _lsb(fn) and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        # c. up one level.
        fn >>= 1
        sn >>= 1
    # 7. both roots reproduced, and the path reached the top.
    return fr == first_hash and sr == second_hash and sn == 0


# -- the same answers, fast ------------------------------------------------------------------------


class MerkleTree:
    """Leaf hashes and every complete subtree above them, level by level, so roots of any prefix and
    proofs cost O(log n) hashes. Appends are O(log n) too."""

    def __init__(self, leaves: Sequence[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for h in leaves:
            self.append(h)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def append(self, leaf: bytes) -> None:
        """Add a leaf hash, completing every subtree it closes."""
        self.levels[0].append(leaf)
        level, i = 0, len(self.levels[0]) - 1
        while i & 1:  # a right child: its parent is now complete
            if len(self.levels) == level + 1:
                self.levels.append([])
            row = self.levels[level]
            self.levels[level + 1].append(node_hash(row[i - 1], row[i]))
            level, i = level + 1, i >> 1

    def _range(self, start: int, end: int) -> bytes:
        """MTH of leaves [start, end), where the range is one the RFC's recursion visits."""
        n = end - start
        if n == 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0 and start % n == 0:
            return self.levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return node_hash(self._range(start, start + k), self._range(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValueError(f"the tree has {self.size} leaves, not {size}")
        return self._range(0, size)

    def inclusion_proof(self, m: int, size: int | None = None) -> list[bytes]:
        """PATH(m, D[size])."""
        size = self.size if size is None else size
        if not 0 <= m < size <= self.size:
            raise ValueError(f"no leaf {m} in a tree of {size}")
        out: list[bytes] = []
        start, end = 0, size
        while end - start > 1:
            k = _split(end - start)
            if m < start + k:
                out.append(self._range(start + k, end))
                end = start + k
            else:
                out.append(self._range(start, start + k))
                start += k
        return out[::-1]

    def consistency_proof(self, m: int, size: int | None = None) -> list[bytes]:
        """PROOF(m, D[size])."""
        size = self.size if size is None else size
        if not 0 < m <= size <= self.size:
            raise ValueError(f"no consistency proof from {m} to {size} leaves")
        out: list[bytes] = []
        start, end, whole = 0, size, True
        while True:
            n = end - start
            if m - start == n:
                if not whole:
                    out.append(self._range(start, end))
                break
            k = _split(n)
            if m - start <= k:
                out.append(self._range(start + k, end))
                end = start + k
            else:
                out.append(self._range(start, start + k))
                start, whole = start + k, False
        return out[::-1]
