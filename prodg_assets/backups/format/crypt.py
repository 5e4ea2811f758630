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

from ...agekeys import AgeError, Identity, Recipient, public_bytes, read_identities, x25519

INTRO = b"age-encryption.org/v1"
CHUNK = 64 * 1024
TAG = 16
_X25519_INFO = b"age-encryption.org/v1/X25519"
# A header is read before anything authenticates it: bounded, so a hostile file costs little to refuse. prodg writes
# one stanza per recipient (a handful); the caps leave room for any real file and for grease stanzas.
MAX_STANZAS = 64
MAX_HEADER = 64 * 1024
MAX_LINE = 1024

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


def _unb64(text: bytes, what: str) -> bytes:
    """Canonical unpadded base64 only (age-encryption.org/v1): no padding, no line breaks or spaces, no non-zero
    trailing bits — so one header has one encoding, and what the MAC covers is what was parsed."""
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise AgeError(f"header: {what} is not base64") from None
    if _b64(data) != text:
        raise AgeError(f"header: {what} is not canonical unpadded base64")
    return data


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

    def line(self, limit: int = MAX_LINE) -> bytes:
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


def _is_arg(arg: bytes) -> bool:
    """A stanza argument: one or more printable ASCII characters, no spaces (VCHAR, 0x21–0x7E)."""
    return bool(arg) and all(0x21 <= c <= 0x7E for c in arg)


def _stanza(line: bytes, reader: _Reader) -> tuple[list[bytes], bytes, bytes]:
    """One stanza: its arguments, its body (decoded) and its bytes as the MAC covers them. The body is lines of 64
    columns ended by a shorter (possibly empty) one."""
    args = line[3:].split(b" ")
    if not all(_is_arg(arg) for arg in args):
        raise AgeError("header: stanza arguments must be printable ASCII separated by single spaces")
    raw, body = line + b"\n", b""
    while True:
        body_line = reader.line(limit=64)
        raw += body_line + b"\n"
        if len(body_line) > 64:
            raise AgeError("header: stanza body line over 64 columns")
        body += body_line
        if len(body_line) < 64:
            break
        if len(raw) > MAX_HEADER:
            raise AgeError(f"header: over {MAX_HEADER} bytes")
    return args, _unb64(body, "stanza body"), raw


def _x25519_share(args: list[bytes], body: bytes) -> bytes:
    """An X25519 stanza's ephemeral share, once its shape is right: `X25519 <32-byte share>`, a 32-byte body (the
    16-byte file key and its tag)."""
    if len(args) != 2:
        raise AgeError("header: an X25519 stanza has exactly one argument, the share")
    share = _unb64(args[1], "X25519 share")
    if len(share) != 32:
        raise AgeError("header: an X25519 share is 32 bytes")
    if len(body) != 32:
        raise AgeError("header: an X25519 stanza body is 32 bytes")
    return share


def _unwrap_file_key(stanzas: list[tuple[list[bytes], bytes]], identities: Sequence[Identity]) -> bytes:
    curve = x25519()
    from cryptography.exceptions import InvalidTag

    x25519_stanzas = [(_x25519_share(args, body), body) for args, body in stanzas if args[0] == b"X25519"]
    for share, body in x25519_stanzas:  # every stanza's shape is checked before any is tried
        for identity in identities:
            own = curve.X25519PrivateKey.from_private_bytes(identity.scalar)
            try:
                shared = own.exchange(curve.X25519PublicKey.from_public_bytes(share))
            except ValueError:  # OpenSSL refuses an all-zero shared secret
                shared = b"\x00" * 32
            if hmac.compare_digest(shared, b"\x00" * 32):
                raise AgeError("header: an X25519 share of low order (the shared secret is zero)")
            wrap_key = _hkdf(shared, share + identity.recipient.key, _X25519_INFO)
            try:
                return _aead(wrap_key).decrypt(b"\x00" * 12, body, None)
            except InvalidTag:
                continue
    raise AgeError("none of the given identities is a recipient of this file")


def decrypt(chunks: Iterable[bytes], identities: Sequence[Identity]) -> Iterator[bytes]:
    """The plaintext of the age file `chunks`, streamed in 64 KiB chunks. Raises AgeError on a header that is not
    strictly age v1 (read at most MAX_HEADER bytes and MAX_STANZAS stanzas), a file no identity opens, a header
    whose MAC fails, a chunk that fails authentication, or a truncated payload or one with bytes after its end.
    Checked against the C2SP/CCTV age test vectors (tests/backups/test_age_testkit.py)."""
    from cryptography.exceptions import InvalidTag

    reader = _Reader(chunks)
    if reader.line() != INTRO:
        raise AgeError("not an age file (age-encryption.org/v1; armored files are not read)")
    header = INTRO + b"\n"
    stanzas: list[tuple[list[bytes], bytes]] = []
    while True:
        line = reader.line()
        if line.startswith(b"---"):
            if not line.startswith(b"--- "):
                raise AgeError("header: the MAC line is '--- ' and the MAC")
            mac = _unb64(line[4:], "MAC")
            if len(mac) != 32:
                raise AgeError("header: the MAC is 32 bytes")
            header += b"---"
            break
        if not line.startswith(b"-> "):
            raise AgeError("header: expected a stanza or the MAC line")
        if len(stanzas) == MAX_STANZAS:
            raise AgeError(f"header: over {MAX_STANZAS} stanzas")
        args, body, raw = _stanza(line, reader)
        header += raw
        if len(header) > MAX_HEADER:
            raise AgeError(f"header: over {MAX_HEADER} bytes")
        stanzas.append((args, body))
    file_key = _unwrap_file_key(stanzas, identities)
    expected = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise AgeError("header: MAC mismatch (the header was altered)")
    nonce = reader.take(16)
    if len(nonce) != 16:
        raise AgeError("header: truncated before the payload's nonce")
    aead = _aead(_hkdf(file_key, nonce, b"payload"))

    def _open(counter: int, block: bytes, last: bool) -> bytes | None:
        try:
            return aead.decrypt(_stream_nonce(counter, last), block, None)
        except InvalidTag:
            return None

    counter = 0
    block = reader.take(CHUNK + TAG)
    while True:
        following = reader.take(CHUNK + TAG) if len(block) == CHUNK + TAG else b""
        # A full chunk is the last one exactly when nothing follows it; if its flag says otherwise, what it holds is
        # still authentic and is released before the stream is refused (as age's reference reader does).
        expected_last = not following
        plain = _open(counter, block, expected_last)
        if plain is None:
            other = _open(counter, block, not expected_last) if len(block) == CHUNK + TAG else None
            if other is None:
                raise AgeError(f"payload: chunk {counter} fails authentication (altered or truncated)")
            yield other
            raise AgeError(f"payload: data after the last chunk (chunk {counter})" if expected_last is False
                           else f"payload: truncated after chunk {counter} (no last chunk)")
        if expected_last and not plain and counter > 0:
            raise AgeError("payload: empty last chunk")
        if plain:
            yield plain
        if expected_last:
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
