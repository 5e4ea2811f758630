"""prodg's age decoder against the C2SP/CCTV age test vectors (tests/backups/age_testkit, copied unchanged from
github.com/C2SP/CCTV age/testdata; 0BSD/CC0/Unlicense): every vector prodg's decoder can be asked to open — an
X25519 identity, a binary (not armored) file — must end exactly as the vector expects, and the plaintext released
before it ends must hash to the vector's `payload`. Vectors for what prodg never reads (passphrase/scrypt files,
ASCII armor, post-quantum hybrid identities) are left out, as the testkit's README allows; prodg only ever opens
binary files encrypted to X25519 recipients."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pytest

from prodg_assets.agekeys import AgeError, Identity
from prodg_assets.backups.format.crypt import decrypt

KIT = Path(__file__).parent / "age_testkit"


def _vector(path: Path) -> tuple[dict[str, list[str]], bytes]:
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return fields, body


def _applies(fields: dict[str, list[str]]) -> bool:
    identities = fields.get("identity", [])
    return (bool(identities) and "passphrase" not in fields and fields.get("armored") != ["yes"]
            and all(i.startswith("AGE-SECRET-KEY-1") for i in identities))


VECTORS = sorted(p for p in KIT.iterdir() if p.is_file() and _applies(_vector(p)[0]))


def _outcome(message: str) -> str:
    """What kind of failure an AgeError of prodg's decoder reports, in the testkit's words."""
    if message.startswith("none of the given identities"):
        return "no match"
    if message.startswith("header: MAC mismatch"):
        return "HMAC failure"
    if message.startswith("payload:"):
        return "payload failure"
    return "header failure"


def test_the_testkit_is_there():
    """The vectors prodg runs cover every outcome the testkit knows (a vendoring that lost files fails here)."""
    expected = {_vector(p)[0]["expect"][0] for p in VECTORS}
    assert len(VECTORS) >= 60, len(VECTORS)
    assert expected == {"success", "no match", "HMAC failure", "header failure", "payload failure"}


@pytest.mark.parametrize("path", VECTORS, ids=[p.name for p in VECTORS])
def test_vector(path):
    fields, body = _vector(path)
    identities = [Identity.parse(text) for text in fields["identity"]]
    released = hashlib.sha256()
    try:
        for chunk in decrypt([body[i:i + 4096] for i in range(0, len(body), 4096)], identities):
            released.update(chunk)
        outcome = "success"
    except AgeError as exc:
        outcome = _outcome(str(exc))
        assert fields["identity"][0] not in str(exc)
    assert outcome == fields["expect"][0], fields.get("comment", [""])[0]
    if "payload" in fields:
        assert released.hexdigest() == fields["payload"][0]
