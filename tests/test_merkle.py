"""The RFC 9162 Merkle tree against the Certificate Transparency reference vectors, the RFC's
recursive definitions against the fast tree for every size, and proofs that must not verify."""

from __future__ import annotations

import random

import pytest

from chain_of_custody import merkle

# The reference leaves and roots of the Certificate Transparency test suite (RFC 6962, unchanged by 9162).
DATA = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                    "606162636465666768696a6b6c6d6e6f")]  # fmt: skip
LEAVES = [merkle.leaf_hash(d) for d in DATA]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, path)
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip
# (first size, second size, proof)
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]  # fmt: skip


def _hex(hashes: list[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


def test_reference_roots() -> None:
    tree = merkle.MerkleTree()
    assert merkle.mth([]).hex() == tree.root().hex() == ROOTS[0]
    for n in range(1, 9):
        tree.append(LEAVES[n - 1])
        assert merkle.mth(LEAVES[:n]).hex() == ROOTS[n], n
        assert tree.root().hex() == ROOTS[n] and tree.root(n).hex() == ROOTS[n], n


@pytest.mark.parametrize(("m", "n", "expected"), INCLUSION)
def test_reference_inclusion_proofs(m: int, n: int, expected: list[str]) -> None:
    assert _hex(merkle.path(m, LEAVES[:n])) == expected
    assert _hex(merkle.MerkleTree(LEAVES).inclusion_proof(m, n)) == expected
    root = bytes.fromhex(ROOTS[n])
    proof = [bytes.fromhex(h) for h in expected]
    assert merkle.verify_inclusion(m, n, LEAVES[m], proof, root)
    # Wrong leaf, index, size, root, or a path cut short or lengthened: each fails.
    assert not merkle.verify_inclusion(m, n, LEAVES[(m + 1) % n], proof, root)
    assert not merkle.verify_inclusion(m ^ 1, n, LEAVES[m], proof, root)
    assert not merkle.verify_inclusion(m, n, LEAVES[m], proof, bytes.fromhex(ROOTS[n - 1]))
    assert not merkle.verify_inclusion(m, n, LEAVES[m], proof[:-1], root)
    assert not merkle.verify_inclusion(m, n, LEAVES[m], [*proof, proof[0]], root)
    assert not merkle.verify_inclusion(n, n, LEAVES[m], proof, root)


@pytest.mark.parametrize(("m", "n", "expected"), CONSISTENCY)
def test_reference_consistency_proofs(m: int, n: int, expected: list[str]) -> None:
    assert _hex(merkle.proof(m, LEAVES[:n])) == expected
    assert _hex(merkle.MerkleTree(LEAVES).consistency_proof(m, n)) == expected
    first, second = bytes.fromhex(ROOTS[m]), bytes.fromhex(ROOTS[n])
    proof = [bytes.fromhex(h) for h in expected]
    assert merkle.verify_consistency(m, n, proof, first, second)
    if m != n:
        assert not merkle.verify_consistency(m, n, proof, bytes.fromhex(ROOTS[m - 1]), second)
        assert not merkle.verify_consistency(m, n, proof, first, bytes.fromhex(ROOTS[n - 1]))
        assert not merkle.verify_consistency(m, n, proof[:-1], first, second)
        assert not merkle.verify_consistency(m, n, [], first, second)
        assert not merkle.verify_consistency(n, m, proof, second, first)


def test_every_size_agrees_with_the_rfc_definitions() -> None:
    """The fast tree gives the RFC's recursive answers for every leaf and every pair of sizes, and
    the verifiers accept exactly those."""
    rng = random.Random(9162)
    leaves = [merkle.leaf_hash(rng.randbytes(rng.randint(0, 40))) for _ in range(40)]
    tree = merkle.MerkleTree(leaves)
    roots = [merkle.mth(leaves[:n]) for n in range(41)]
    for n in range(1, 41):
        assert tree.root(n) == roots[n]
        for m in range(n):
            p = merkle.path(m, leaves[:n])
            assert tree.inclusion_proof(m, n) == p
            assert merkle.verify_inclusion(m, n, leaves[m], p, roots[n])
            assert not merkle.verify_inclusion(m, n, merkle.leaf_hash(b"forged"), p, roots[n])
        for m in range(1, n + 1):
            c = merkle.proof(m, leaves[:n])
            assert tree.consistency_proof(m, n) == c
            assert merkle.verify_consistency(m, n, c, roots[m], roots[n])
            if m < n:
                forged = merkle.mth([*leaves[: m - 1], merkle.leaf_hash(b"rewritten")])
                assert not merkle.verify_consistency(m, n, c, forged, roots[n])


def test_a_truncated_and_regrown_log_is_not_consistent() -> None:
    """The attack the log exists for: entries cut off the end and others written in their place."""
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(20)]
    regrown = leaves[:12] + [merkle.leaf_hash(b"after the cut %d" % i) for i in range(10)]
    old_root = merkle.mth(leaves[:16])
    new_tree = merkle.MerkleTree(regrown)
    proof = new_tree.consistency_proof(16, 22)
    assert not merkle.verify_consistency(16, 22, proof, old_root, new_tree.root())
