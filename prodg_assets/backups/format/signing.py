"""Who signs a backup day's manifest, and whose signatures are trusted. Anyone who can write to the bucket could plant
a day (the recipients are public), so a manifest counts only when an Ed25519 key trusted here signed it:

- the host signs with a key derived from its age identity (PRODG_BACKUP_IDENTITY): Ed25519 seed =
  HKDF-SHA256(the identity's X25519 secret, info "prodg manifest signing v1") — no second secret to keep, never on
  the bucket, gone with the host like the identity;
- trusted are the key of the identity in use (a host trusts itself) and the keys prodg.yaml lists under
  `backups.signers` (what an operator restoring after the host is lost trusts: `prodg backup-signer` prints a host's).

A key is written as the base64 of its SubjectPublicKeyInfo (`MCowBQYDK2VwAyEA…`, the body of a PEM public key, so
`openssl pkeyutl -verify` checks a manifest by hand). What is signed binds the manifest to its object key, so a
genuine manifest moved to another day or target does not verify: `prodg manifest v1\\n<key>\\n<manifest bytes>`."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from ...agekeys import AgeError, Identity, read_identities
from ...signkeys import SigningError, parse_signer, signer_text

__all__ = ["ManifestSigner", "SigningError", "TrustedSigners", "host_signer", "parse_signer", "signer_text"]

SIGNING_INFO = b"prodg manifest signing v1"
CONTEXT = b"prodg manifest v1\n"


def _ed25519():
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519


def signed_message(key: str, raw: bytes) -> bytes:
    """What a manifest's signature covers: the manifest's bytes bound to the object key it is stored under."""
    return CONTEXT + key.encode() + b"\n" + raw


@dataclass(frozen=True)
class ManifestSigner:
    """The host's signing key, derived from its age identity. Its repr never shows the key."""

    seed: bytes

    def __repr__(self) -> str:
        return f"ManifestSigner({self.text})"

    @classmethod
    def of(cls, identity: Identity) -> "ManifestSigner":
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        return cls(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SIGNING_INFO).derive(identity.scalar))

    @property
    def public_raw(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        public = _ed25519().Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)

    @property
    def text(self) -> str:
        return signer_text(self.public_raw)

    def sign(self, key: str, raw: bytes) -> str:
        """The base64 signature of the manifest `raw` stored as `key`."""
        private = _ed25519().Ed25519PrivateKey.from_private_bytes(self.seed)
        return base64.b64encode(private.sign(signed_message(key, raw))).decode()


def host_signer(identity_file: str) -> ManifestSigner:
    """The signing key of the host whose age identity file is `identity_file` (its first identity)."""
    if not identity_file:
        raise SigningError("no key to sign the manifest with: set PRODG_BACKUP_IDENTITY to the host's age identity "
                           "file (manifests are signed with a key derived from it)")
    try:
        return ManifestSigner.of(read_identities(identity_file)[0])
    except AgeError as exc:
        raise SigningError(f"no key to sign the manifest with (PRODG_BACKUP_IDENTITY): {exc}") from None


@dataclass(frozen=True)
class TrustedSigners:
    """The verify keys whose manifests are believed, by name (for messages): prodg.yaml's and the host's own."""

    keys: Mapping[str, str]  # signer text → name

    @classmethod
    def of(cls, listed: Mapping[str, str], identity_file: str = "") -> "TrustedSigners":
        """prodg.yaml's `backups.signers` (name → key), and the key of `identity_file` when one is given."""
        keys: dict = {}
        for name, text in listed.items():
            keys[signer_text(parse_signer(text))] = f"{name} (backups.signers)"
        if identity_file:
            keys.setdefault(host_signer(identity_file).text, "this host (PRODG_BACKUP_IDENTITY)")
        return cls(keys)

    def names(self) -> Sequence[str]:
        return sorted(self.keys.values())

    def check(self, key: str, raw: bytes, signature: str, signer: str) -> Optional[str]:
        """None when `signature` is `signer`'s over the manifest `raw` stored as `key` and `signer` is trusted; else
        why not, in words."""
        from cryptography.exceptions import InvalidSignature

        if not signature:
            return "it carries no signature"
        if signer not in self.keys:
            trusted = ", ".join(f"{name} {text}" for text, name in sorted(self.keys.items())) or "none"
            return f"its signer {signer or '(none named)'} is not one of them (trusted: {trusted})"
        try:
            sig = base64.b64decode(signature, validate=True)
            _ed25519().Ed25519PublicKey.from_public_bytes(parse_signer(signer)).verify(sig, signed_message(key, raw))
        except (InvalidSignature, binascii.Error, ValueError):
            return f"its signature does not match its bytes (it names {self.keys[signer]} as signer)"
        return None
