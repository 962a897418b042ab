"""RFC 9162 Merkle trees as plain functions: the leaf and node hashes, the root of a list of
leaves, the growing right edge of a tree (``Frontier``), and inclusion and consistency
proofs with their verification.

Proofs are built from the hashes of *perfect* subtrees (2^level leaves starting at a
multiple of 2^level), the only nodes the log stores: ``proof_nodes`` names the ones a proof
needs, ``subtree_root`` folds them into the hash of any range a proof names."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Node = tuple[int, int]  # (level, index): the perfect subtree of leaves [i*2^l, (i+1)*2^l)
EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """SHA-256(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes, by the RFC's recursion (for tests and small trees)."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = split_point(n)
    return node_hash(root_of(leaves[:k]), root_of(leaves[k:]))


def range_nodes(start: int, end: int) -> list[Node]:
    """The perfect subtrees that make up leaves [start, end), left to right, when ``start``
    is a multiple of the largest of them (true of every range a proof names)."""
    nodes: list[Node] = []
    while start < end:
        level = (end - start).bit_length() - 1
        while start % (1 << level):
            level -= 1
        nodes.append((level, start >> level))
        start += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """The root of consecutive perfect subtrees of decreasing size: right to left."""
    root = hashes[-1]
    for h in reversed(hashes[:-1]):
        root = node_hash(h, root)
    return root


def subtree_root(start: int, end: int, lookup: Callable[[Node], bytes]) -> bytes:
    """MTH(D[start:end]) from stored perfect-subtree hashes."""
    return fold([lookup(n) for n in range_nodes(start, end)])


def inclusion_ranges(index: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots make PATH(index, D[size]), bottom up (RFC 9162 2.1.3.1)."""
    ranges: list[tuple[int, int]] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start += k
    return ranges[::-1]


def consistency_ranges(old: int, size: int) -> list[tuple[int, int]]:
    """The leaf ranges whose roots make PROOF(old, D[size]), in order (RFC 9162 2.1.4.1)."""
    if old == 0 or old >= size:
        return []
    ranges: list[tuple[int, int]] = []
    start, end, whole = 0, size, True
    m = old
    while m != end - start:
        k = split_point(end - start)
        if m <= k:
            ranges.append((start + k, end))
            end = start + k
        else:
            ranges.append((start, start + k))
            start, m, whole = start + k, m - k, False
    if not whole:
        ranges.append((start, end))
    return ranges[::-1]


def proof_nodes(ranges: Sequence[tuple[int, int]]) -> set[Node]:
    return {n for start, end in ranges for n in range_nodes(start, end)}


def prove(ranges: Sequence[tuple[int, int]], lookup: Callable[[Node], bytes]) -> list[bytes]:
    return [subtree_root(start, end, lookup) for start, end in ranges]


class ProofError(ValueError):
    """A proof that does not prove what it claims."""


def root_from_inclusion(index: int, size: int, leaf: bytes, path: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 2.1.3.2); compare it with the
    trusted root."""
    if index < 0:
        raise ProofError(f"leaf index {index} is negative")
    if index >= size:
        raise ProofError(f"leaf index {index} is not below the tree size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError("the inclusion path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("the inclusion path is shorter than the tree is deep")
    return r


def check_consistency(old: int, size: int, old_root: bytes, root: bytes,
                      proof: Sequence[bytes]) -> None:
    """Raise ProofError unless ``proof`` shows the tree of ``size`` leaves with ``root``
    extends the tree of ``old`` leaves with ``old_root`` (RFC 9162 2.1.4.2)."""
    if old > size:
        raise ProofError(f"a tree of {size} leaves cannot extend one of {old}")
    if old == size or old == 0:
        if proof:
            raise ProofError("a proof between these sizes is empty")
        if old == size and old_root != root:
            raise ProofError("the same size with two different roots")
        return
    path = list(proof)
    if old & (old - 1) == 0:  # a power of two: the old root is the first node
        path.insert(0, old_root)
    if not path:
        raise ProofError("the consistency proof is empty")
    fn, sn = old - 1, size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("the consistency proof is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0 or fr != old_root or sr != root:
        raise ProofError(f"the tree of {size} leaves does not extend the tree of {old} "
                         "leaves that was signed: history was rewritten")


@dataclass
class Frontier:
    """The right edge of a growing tree: the roots of its perfect subtrees, largest first.
    ``append`` returns the perfect subtrees each new leaf completes (to be stored)."""

    size: int = 0
    hashes: list[bytes] = field(default_factory=list)

    def append(self, leaf: bytes) -> list[tuple[Node, bytes]]:
        completed: list[tuple[Node, bytes]] = []
        h, index, level = leaf, self.size, 0
        self.hashes.append(h)
        while index & 1:
            right = self.hashes.pop()
            h = node_hash(self.hashes.pop(), right)
            index, level = index >> 1, level + 1
            self.hashes.append(h)
            completed.append(((level, index), h))
        self.size += 1
        return completed

    def root(self) -> bytes:
        return fold(self.hashes) if self.hashes else EMPTY_ROOT

    @classmethod
    def of(cls, size: int, lookup: Callable[[Node], bytes]) -> Frontier:
        """The frontier of a stored tree of ``size`` leaves."""
        return cls(size, [lookup(n) for n in range_nodes(0, size)])
