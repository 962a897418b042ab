"""Signed checkpoints: (tree size, root hash, time) signed with the log's Ed25519 key,
whose private half lives in a file outside the database (``ARBITER_AUDIT_SIGNING_KEY``).

The signed message, byte for byte (ASCII, each line ending in one LF byte)::

    arbiter-audit-checkpoint/v1
    <tree size in decimal>
    <root hash, 64 lowercase hex digits>
    <time: ISO 8601 UTC with microseconds, e.g. 2026-12-05T10:31:02.123456+00:00>

The key id is the first 16 hex digits of SHA-256 of the raw 32-byte public key.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.audit.encoding import stamp
from app.db.audit_tree import AuditCheckpoint
from app.errors import ArbiterError

log = logging.getLogger("arbiter.audit")
HEADER = "arbiter-audit-checkpoint/v1"
DEMO_KEY_FILE = "audit-signing-key.pem"


def message(tree_size: int, root_hash: str, at: datetime) -> bytes:
    """The bytes a checkpoint's signature covers (see the module's docstring)."""
    return f"{HEADER}\n{tree_size}\n{root_hash}\n{stamp(at)}\n".encode("ascii")


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def public_key_of(hex_key: str) -> Ed25519PublicKey:
    try:
        return Ed25519PublicKey.from_public_bytes(bytes.fromhex(hex_key))
    except ValueError:
        raise ArbiterError(f"{hex_key!r} is not a hex Ed25519 public key (64 hex digits, "
                           "as `arbiter audit public-key` prints)") from None


def sign(key: Ed25519PrivateKey, tree_size: int, root_hash: str,
         at: datetime) -> AuditCheckpoint:
    signature = key.sign(message(tree_size, root_hash, at)).hex()
    return AuditCheckpoint(tree_size=tree_size, root_hash=root_hash, at=at,
                           signature=signature, key_id=key_id(key.public_key()))


def signature_problem(c: AuditCheckpoint, key: Ed25519PublicKey) -> str | None:
    """Why a checkpoint's signature does not hold for ``key``, or None."""
    mine = key_id(key)
    if c.key_id != mine:
        return (f"checkpoint of size {c.tree_size} signed at {stamp(c.at)} names key "
                f"{c.key_id}, not this log's key {mine}")
    try:
        key.verify(bytes.fromhex(c.signature), message(c.tree_size, c.root_hash, c.at))
    except (InvalidSignature, ValueError):
        return (f"checkpoint of size {c.tree_size} signed at {stamp(c.at)}: its signature "
                f"does not verify with key {mine} (forged or altered)")
    return None


def as_json(c: AuditCheckpoint) -> dict[str, Any]:
    return {"treeSize": c.tree_size, "rootHash": c.root_hash, "at": stamp(c.at),
            "signature": c.signature, "keyId": c.key_id}


def from_json(d: dict[str, Any]) -> AuditCheckpoint:
    return AuditCheckpoint(tree_size=int(d["treeSize"]), root_hash=str(d["rootHash"]),
                           at=datetime.fromisoformat(d["at"]), signature=str(d["signature"]),
                           key_id=str(d["keyId"]))


def read_witness_file(path: Path) -> list[AuditCheckpoint]:
    """Checkpoints a witness kept (``arbiter audit checkpoints`` output: JSON Lines)."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except OSError as exc:
        raise ArbiterError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return [from_json(json.loads(ln)) for ln in lines]
    except (ValueError, KeyError, TypeError) as exc:
        raise ArbiterError(f"{path} is not a file of checkpoints (JSON Lines with treeSize, "
                           f"rootHash, at, signature, keyId): {exc}") from None


@dataclass(frozen=True)
class SigningKey:
    """The log's private key, where it was read from."""

    key: Ed25519PrivateKey
    path: Path

    @property
    def public(self) -> Ed25519PublicKey:
        return self.key.public_key()


def load_signing_key(configured: Path | None, data_dir: Path, production: bool) -> SigningKey:
    """The key in ``configured``; unset, the demo key in the data folder (made on first
    use). In production a key lying in the data folder (beside the database's backups)
    is warned about: whoever holds both can sign a rewritten history."""
    path = configured if configured is not None else data_dir / DEMO_KEY_FILE
    if configured is None and not path.exists():
        _generate(path)
    try:
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ArbiterError(f"cannot read the audit signing key {path}: {exc.strerror}; set "
                           "ARBITER_AUDIT_SIGNING_KEY to an Ed25519 PEM file") from None
    except ValueError as exc:
        raise ArbiterError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise ArbiterError(f"{path} holds a {type(loaded).__name__}, not an Ed25519 key")
    if production and path.resolve().is_relative_to(data_dir.resolve()):
        log.warning("audit signing key %s lies in the data folder: keep it elsewhere "
                    "(ARBITER_AUDIT_SIGNING_KEY) so a copy of the data cannot sign", path)
    return SigningKey(loaded, path)


@functools.cache
def log_key(configured: Path | None, data_dir: Path, production: bool) -> SigningKey:
    """``load_signing_key``, read once per process (servers verify and prove with it)."""
    return load_signing_key(configured, data_dir, production)


def _generate(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    partial = path.with_name(path.name + f".{os.getpid()}.partial")
    partial.write_bytes(pem)
    partial.chmod(0o600)
    try:
        os.link(partial, path)  # the first process to make it wins; others read its key
    except FileExistsError:
        pass
    finally:
        partial.unlink(missing_ok=True)
