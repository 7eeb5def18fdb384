"""RFC 9162 (Certificate Transparency 2.0) section 2.1.1 Merkle tree hash, built incrementally in one pass."""

import hashlib


class MerkleTree:
    """MTH over the leaves added so far: SHA-256(0x00 || leaf) for a leaf, SHA-256(0x01 || left || right) for a
    node, the left subtree of n leaves holding the largest power of two below n. Kept as the stack of perfect
    subtrees of n's binary decomposition (O(log n) memory), which folded right to left gives exactly that tree."""

    def __init__(self):
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (leaves, hash), strictly decreasing sizes, left to right

    def add(self, leaf: bytes) -> None:
        size, digest = 1, hashlib.sha256(b"\x00" + leaf).digest()
        while self._stack and self._stack[-1][0] == size:
            left = self._stack.pop()[1]
            size, digest = size * 2, hashlib.sha256(b"\x01" + left + digest).digest()
        self._stack.append((size, digest))
        self.size += 1

    def root(self) -> bytes:
        if not self._stack:
            return hashlib.sha256(b"").digest()
        digest = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            digest = hashlib.sha256(b"\x01" + left + digest).digest()
        return digest
