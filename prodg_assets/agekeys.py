"""The keys of the age format (age-encryption.org/v1): X25519 recipients (`age1…`, public, listed in prodg.yaml) and
identities (`AGE-SECRET-KEY-1…`, private, in files outside git), both bech32 strings. Pure parsing, shared by the
config's validation and the backups' encryption; an identity's key is never shown in a repr or an error."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
_B32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


class AgeError(ValueError):
    """A malformed key or file, a file no given identity opens, or a payload that fails authentication."""


# -- bech32 (BIP 173), the encoding of age's keys -------------------------------------------------------------------
def _polymod(values: Iterable[int]) -> int:
    generator = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= generator[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: Iterable[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out, mask = [], (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & mask)
    if pad and bits:
        out.append((acc << (to_bits - bits)) & mask)
    elif not pad and (bits >= from_bits or (acc << (to_bits - bits)) & mask):
        raise AgeError("bech32: leftover bits")
    return out


def bech32_encode(hrp: str, payload: bytes) -> str:
    data = _regroup(payload, 8, 5, True)
    checksum = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ 1
    data += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_B32[d] for d in data)


def bech32_decode(text: str, hrp: str) -> bytes:
    if text.lower() != text and text.upper() != text:
        raise AgeError("bech32: mixed case")
    text = text.lower()
    sep = text.rfind("1")
    if sep < 1 or text[:sep] != hrp or len(text) - sep < 7:
        raise AgeError(f"not an {hrp!r} bech32 string")
    try:
        data = [_B32.index(c) for c in text[sep + 1:]]
    except ValueError:
        raise AgeError("bech32: invalid character") from None
    if _polymod(_hrp_expand(hrp) + data) != 1:
        raise AgeError("bech32: checksum mismatch")
    return bytes(_regroup(data[:-6], 5, 8, False))


# -- keys -------------------------------------------------------------------------------------------------------------
def x25519():
    from cryptography.hazmat.primitives.asymmetric import x25519

    return x25519


def public_bytes(public_key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True)
class Recipient:
    """An X25519 public key, `age1…`."""

    text: str
    key: bytes  # 32 bytes

    @classmethod
    def parse(cls, text: str) -> "Recipient":
        text = text.strip()
        key = bech32_decode(text, RECIPIENT_HRP)
        if len(key) != 32:
            raise AgeError(f"an age recipient holds 32 bytes, this one {len(key)}")
        return cls(text.lower(), key)

    @property
    def fingerprint(self) -> str:
        """What a manifest records of the recipient: the first 16 hex digits of the sha256 of its `age1…` text."""
        return "sha256:" + hashlib.sha256(self.text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """An X25519 private key, `AGE-SECRET-KEY-1…`. Its repr never shows the key."""

    scalar: bytes

    def __repr__(self) -> str:
        return f"Identity({self.recipient.text})"

    @classmethod
    def parse(cls, text: str) -> "Identity":
        scalar = bech32_decode(text.strip(), IDENTITY_HRP)
        if len(scalar) != 32:
            raise AgeError(f"an age identity holds 32 bytes, this one {len(scalar)}")
        return cls(scalar)

    @classmethod
    def generate(cls) -> "Identity":
        return cls(os.urandom(32))

    @property
    def text(self) -> str:
        return bech32_encode(IDENTITY_HRP, self.scalar).upper()

    @property
    def recipient(self) -> Recipient:
        public = public_bytes(x25519().X25519PrivateKey.from_private_bytes(self.scalar).public_key())
        return Recipient(bech32_encode(RECIPIENT_HRP, public), public)


def read_identities(path: str | Path) -> list[Identity]:
    """The identities of an age identity file (`age-keygen`'s output: `#` comments, one key per line). Errors name
    the file and line, never the key."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise AgeError(f"{path}: the identity file is open to other users (mode {mode & 0o777:04o}); a secret key "
                           f"is kept mode 600: chmod 600 {path}")
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise AgeError(f"{path}: cannot read the identity file ({exc.strerror})") from None
    out = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            out.append(Identity.parse(line))
        except AgeError as exc:
            raise AgeError(f"{path}:{number}: not an age identity ({exc})") from None
    if not out:
        raise AgeError(f"{path}: holds no age identity (AGE-SECRET-KEY-1…)")
    return out
