"""The keys that sign backup manifests: Ed25519 verify keys as prodg.yaml's `backups.signers` lists them — the base64
of a key's SubjectPublicKeyInfo (`MCowBQYDK2VwAyEA…`, the body of a PEM public key, which `openssl pkeyutl` reads).
Pure parsing, shared by the config's validation and the backups' signing (backups/format/signing.py)."""

from __future__ import annotations

import base64
import binascii

_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")  # DER of an Ed25519 SubjectPublicKeyInfo, before the key


class SigningError(ValueError):
    """A signer key that does not parse, or no key to sign with (the identity setting empty or unreadable)."""


def signer_text(public_raw: bytes) -> str:
    """A verify key as prodg.yaml lists it: base64 of its SubjectPublicKeyInfo."""
    return base64.b64encode(_SPKI_PREFIX + public_raw).decode()


def parse_signer(text: str) -> bytes:
    """The raw 32-byte Ed25519 key of a `backups.signers` entry; raises SigningError saying what is wrong."""
    try:
        der = base64.b64decode(str(text).strip(), validate=True)
    except (binascii.Error, ValueError):
        raise SigningError("not base64: an Ed25519 public key as `prodg backup-signer` prints it "
                           "(MCowBQYDK2VwAyEA…)") from None
    if len(der) != len(_SPKI_PREFIX) + 32 or not der.startswith(_SPKI_PREFIX):
        raise SigningError("not an Ed25519 public key as `prodg backup-signer` prints it (MCowBQYDK2VwAyEA…)")
    return der[len(_SPKI_PREFIX):]
