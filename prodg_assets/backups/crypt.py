"""Encryption of backup streams in the age format (age-encryption.org/v1, X25519 recipients), streamed both ways in
64 KiB chunks, so what prodg writes the plain `age` CLI decrypts, and what `age` writes prodg reads.

Only public recipients (`age1…`) are needed to take a backup; an identity (`AGE-SECRET-KEY-1…`, in a file outside
git) is needed only to read one back. The format, per https://age-encryption.org/v1:
- header: `age-encryption.org/v1`, one `-> X25519 <ephemeral share>` stanza per recipient whose body is the 16-byte
  file key sealed with ChaCha20-Poly1305 under HKDF-SHA256(X25519(ephemeral, recipient), salt = share ‖ recipient,
  info = "age-encryption.org/v1/X25519"), then `--- <HMAC-SHA256 of the header>` keyed by HKDF(file key, "header");
- payload: a 16-byte nonce, then the STREAM construction: 64 KiB plaintext chunks sealed with ChaCha20-Poly1305
  under HKDF(file key, salt = nonce, info = "payload"), each nonce an 11-byte big-endian counter and a last-chunk
  flag byte.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Iterable, Iterator, Sequence

import dagster as dg

from ..agekeys import AgeError, Identity, Recipient, public_bytes, read_identities, x25519

INTRO = b"age-encryption.org/v1"
CHUNK = 64 * 1024
TAG = 16
_X25519_INFO = b"age-encryption.org/v1/X25519"

__all__ = ["AgeError", "BackupIdentity", "Identity", "Recipient", "decrypt", "encrypt", "identities_for"]


# -- primitives -------------------------------------------------------------------------------------------------------
def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


def _aead(key: bytes):
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    return ChaCha20Poly1305(key)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    if text.endswith(b"=") or b"\r" in text:
        raise AgeError("header: base64 must be unpadded")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise AgeError("header: invalid base64") from None


def _wrap(body: bytes) -> bytes:
    """A stanza body: base64 in lines of 64 columns, the last one shorter (empty when the length divides by 64)."""
    text = _b64(body)
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")
    return b"\n".join(lines) + b"\n"


def _stream_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# -- encryption -------------------------------------------------------------------------------------------------------
def _header(file_key: bytes, recipients: Sequence[Recipient]) -> bytes:
    curve = x25519()
    header = INTRO + b"\n"
    for recipient in recipients:
        ephemeral = curve.X25519PrivateKey.generate()
        share = public_bytes(ephemeral.public_key())
        shared = ephemeral.exchange(curve.X25519PublicKey.from_public_bytes(recipient.key))
        wrap_key = _hkdf(shared, share + recipient.key, _X25519_INFO)
        header += b"-> X25519 " + _b64(share) + b"\n" + _wrap(_aead(wrap_key).encrypt(b"\x00" * 12, file_key, None))
    header += b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    return header + b" " + _b64(mac) + b"\n"


def encrypt(chunks: Iterable[bytes], recipients: Sequence[Recipient]) -> Iterator[bytes]:
    """`chunks` encrypted to every one of `recipients` (any one identity opens the file), streamed: at most one
    input chunk plus 64 KiB is held."""
    if not recipients:
        raise AgeError("encryption needs at least one recipient")
    file_key, nonce = os.urandom(16), os.urandom(16)
    yield _header(file_key, recipients) + nonce
    aead = _aead(_hkdf(file_key, nonce, b"payload"))
    pending, counter = b"", 0
    for chunk in chunks:
        data = pending + chunk if pending else chunk
        view, pos, out = memoryview(data), 0, []
        while len(data) - pos > CHUNK:  # a full chunk is sealed only once more data follows: the last one is flagged
            out.append(aead.encrypt(_stream_nonce(counter, False), view[pos:pos + CHUNK], None))
            pos, counter = pos + CHUNK, counter + 1
        pending = bytes(view[pos:])
        if out:
            yield b"".join(out)
    yield aead.encrypt(_stream_nonce(counter, True), pending, None)


# -- decryption -------------------------------------------------------------------------------------------------------
class _Reader:
    """Lines and exact byte counts from an iterator of chunks."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks, self._buf = iter(chunks), bytearray()

    def _fill(self, need: int) -> bool:
        while len(self._buf) < need:
            try:
                self._buf += next(self._chunks)
            except StopIteration:
                return False
        return True

    def line(self, limit: int = 1024) -> bytes:
        while b"\n" not in self._buf:
            if len(self._buf) > limit or not self._fill(len(self._buf) + 1):
                raise AgeError("header: truncated or not an age file")
        end = self._buf.index(b"\n")
        out = bytes(self._buf[:end])
        del self._buf[:end + 1]
        return out

    def take(self, n: int) -> bytes:
        """Up to `n` bytes (fewer only at the end of the stream)."""
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out


def _unwrap_file_key(stanzas: list[tuple[list[bytes], bytes]], identities: Sequence[Identity]) -> bytes:
    curve = x25519()
    from cryptography.exceptions import InvalidTag

    for args, body in stanzas:
        if args[:1] != [b"X25519"]:
            continue  # other recipient types and grease
        if len(args) != 2:
            raise AgeError("header: malformed X25519 stanza")
        share = _unb64(args[1])
        if len(share) != 32 or len(body) != 32:
            raise AgeError("header: malformed X25519 stanza")
        for identity in identities:
            own = curve.X25519PrivateKey.from_private_bytes(identity.scalar)
            shared = own.exchange(curve.X25519PublicKey.from_public_bytes(share))
            if shared == b"\x00" * 32:
                raise AgeError("header: X25519 share of low order")
            wrap_key = _hkdf(shared, share + identity.recipient.key, _X25519_INFO)
            try:
                return _aead(wrap_key).decrypt(b"\x00" * 12, body, None)
            except InvalidTag:
                continue
    raise AgeError("none of the given identities is a recipient of this file")


def decrypt(chunks: Iterable[bytes], identities: Sequence[Identity]) -> Iterator[bytes]:
    """The plaintext of the age file `chunks`, streamed in 64 KiB chunks. Raises AgeError on a file no identity
    opens, a header whose MAC fails, a chunk that fails authentication, or a truncated payload."""
    from cryptography.exceptions import InvalidTag

    reader = _Reader(chunks)
    if reader.line() != INTRO:
        raise AgeError("not an age file (age-encryption.org/v1; armored files are not read)")
    header = INTRO + b"\n"
    stanzas: list[tuple[list[bytes], bytes]] = []
    while True:
        line = reader.line()
        if line.startswith(b"--- ") or line == b"---":
            mac_text = line[4:]
            header += b"---"
            break
        if not line.startswith(b"-> "):
            raise AgeError("header: expected a stanza or the MAC line")
        header += line + b"\n"
        body = b""
        while True:
            body_line = reader.line()
            header += body_line + b"\n"
            if len(body_line) > 64:
                raise AgeError("header: stanza body line over 64 columns")
            body += body_line
            if len(body_line) < 64:
                break
        stanzas.append((line[3:].split(b" "), _unb64(body)))
    file_key = _unwrap_file_key(stanzas, identities)
    expected = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64(mac_text)):
        raise AgeError("header: MAC mismatch (the header was altered)")
    nonce = reader.take(16)
    if len(nonce) != 16:
        raise AgeError("payload: truncated before its nonce")
    aead = _aead(_hkdf(file_key, nonce, b"payload"))
    counter = 0
    block = reader.take(CHUNK + TAG)
    while True:
        following = reader.take(CHUNK + TAG) if len(block) == CHUNK + TAG else b""
        last = not following
        try:
            plain = aead.decrypt(_stream_nonce(counter, last), block, None)
        except InvalidTag:
            raise AgeError(f"payload: chunk {counter} fails authentication (altered or truncated)") from None
        if last and not plain and counter > 0:
            raise AgeError("payload: empty last chunk")
        if plain:
            yield plain
        if last:
            return
        block, counter = following, counter + 1


class BackupIdentity(dg.ConfigurableResource):
    """The host's age identity file (PRODG_BACKUP_IDENTITY), read only by restores and restore drills. Its recipient
    is one of prodg.yaml's `backups.encryption.recipients`; taking a backup never needs it."""

    identity_file: str = ""

    def identities(self) -> list[Identity]:
        if not self.identity_file:
            raise AgeError("no identity to decrypt with: set PRODG_BACKUP_IDENTITY to the host's age identity file "
                           "(its recipient must be listed in backups.encryption.recipients)")
        return read_identities(self.identity_file)


def identities_for(identities: Sequence[Identity], fingerprints: Sequence[str], what: str) -> list[Identity]:
    """The identities among `identities` that `fingerprints` (a manifest's recipients) name; raises AgeError naming
    both sides when none does."""
    usable = [i for i in identities if i.recipient.fingerprint in set(fingerprints)]
    if not usable:
        have = ", ".join(i.recipient.fingerprint for i in identities)
        raise AgeError(f"{what} is encrypted to {', '.join(fingerprints)}; the given identities are {have}")
    return usable
