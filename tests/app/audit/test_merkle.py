"""RFC 9162 hashing and proofs: the Certificate Transparency reference vectors, then every
leaf and every pair of sizes of larger trees against the RFC's own recursion (brute force)."""

from __future__ import annotations

import hashlib

import pytest

from app.audit import merkle

# The reference leaves and roots of the Certificate Transparency test suite (RFC 6962,
# whose hashing RFC 9162 keeps), and two of its inclusion proofs.
CT_LEAVES = [bytes.fromhex(h) for h in ("", "00", "10", "2021", "3031", "40414243",
                                         "5051525354555657",
                                         "606162636465666768696a6b6c6d6e6f")]
CT_ROOTS = [
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
CT_INCLUSION = {
    0: ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
        "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"],
    5: ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"],
}


def stored(leaves: list[bytes]) -> dict[merkle.Node, bytes]:
    """Every perfect subtree of a tree, as the sequencer stores them."""
    nodes: dict[merkle.Node, bytes] = {}
    frontier = merkle.Frontier()
    for i, leaf in enumerate(leaves):
        nodes[(0, i)] = leaf
        nodes.update(frontier.append(leaf))
    return nodes


def test_reference_roots_and_proofs() -> None:
    leaves = [merkle.leaf_hash(e) for e in CT_LEAVES]
    assert merkle.leaf_hash(b"") == hashlib.sha256(b"\x00").digest()
    frontier = merkle.Frontier()
    for n in range(len(leaves) + 1):
        assert merkle.root_of(leaves[:n]).hex() == CT_ROOTS[n]
        assert frontier.root().hex() == CT_ROOTS[n]
        if n < len(leaves):
            frontier.append(leaves[n])
    nodes = stored(leaves)
    for index, expected in CT_INCLUSION.items():
        path = merkle.prove(merkle.inclusion_ranges(index, 8), nodes.__getitem__)
        assert [p.hex() for p in path] == expected
        assert merkle.root_from_inclusion(index, 8, leaves[index], path).hex() == CT_ROOTS[8]


def test_every_proof_of_larger_trees_verifies_and_a_wrong_one_does_not() -> None:
    leaves = [merkle.leaf_hash(i.to_bytes(2, "big")) for i in range(37)]
    nodes = stored(leaves)
    roots = [merkle.root_of(leaves[:n]) for n in range(len(leaves) + 1)]
    for size in range(1, len(leaves) + 1):
        assert merkle.Frontier.of(size, nodes.__getitem__).root() == roots[size]
        for index in range(size):
            path = merkle.prove(merkle.inclusion_ranges(index, size), nodes.__getitem__)
            assert merkle.root_from_inclusion(index, size, leaves[index], path) == roots[size]
            other = leaves[(index + 1) % size]
            if other != leaves[index]:
                assert merkle.root_from_inclusion(index, size, other, path) != roots[size]
        for old in range(0, size + 1):
            proof = merkle.prove(merkle.consistency_ranges(old, size), nodes.__getitem__)
            merkle.check_consistency(old, size, roots[old], roots[size], proof)
            if 0 < old < size:
                with pytest.raises(merkle.ProofError):
                    merkle.check_consistency(old, size, roots[old - 1], roots[size], proof)
                with pytest.raises(merkle.ProofError):
                    merkle.check_consistency(old, size, roots[old], roots[size - 1], proof)


def test_a_proof_of_the_wrong_length_is_refused() -> None:
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(6)]
    nodes = stored(leaves)
    path = merkle.prove(merkle.inclusion_ranges(2, 6), nodes.__getitem__)
    with pytest.raises(merkle.ProofError, match="longer"):
        merkle.root_from_inclusion(2, 6, leaves[2], [*path, path[0]])
    with pytest.raises(merkle.ProofError, match="shorter"):
        merkle.root_from_inclusion(2, 6, leaves[2], path[:-1])
    with pytest.raises(merkle.ProofError, match="not below"):
        merkle.root_from_inclusion(6, 6, leaves[2], path)


def test_a_negative_leaf_index_is_refused() -> None:
    """Index -1 of a one-leaf tree led to its root (the leaf itself): a proof of a leaf
    that cannot exist."""
    leaf = merkle.leaf_hash(b"only")
    with pytest.raises(merkle.ProofError, match="leaf index -1 is negative"):
        merkle.root_from_inclusion(-1, 1, leaf, [])
    leaves = [merkle.leaf_hash(bytes([i])) for i in range(6)]
    path = merkle.prove(merkle.inclusion_ranges(5, 6), stored(leaves).__getitem__)
    with pytest.raises(merkle.ProofError, match="negative"):
        merkle.root_from_inclusion(-1, 6, leaves[5], path)
