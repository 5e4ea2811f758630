"""What prodg's age reader refuses beyond the C2SP vectors (tests/backups/test_age_testkit.py): a header that never
ends costs a bounded read, and an identity file other users can read is refused, naming the file and the fix."""

from __future__ import annotations

import itertools
import os

import pytest

from prodg_assets.agekeys import AgeError, Identity, read_identities
from prodg_assets.backups.format.crypt import MAX_HEADER, MAX_STANZAS, decrypt, encrypt


def _counting(chunks):
    """The chunks, and a list whose length is how many bytes were taken from them."""
    taken: list[int] = []

    def gen():
        for chunk in chunks:
            taken.append(len(chunk))
            yield chunk
    return gen(), taken


@pytest.mark.parametrize("endless", ["stanzas", "body", "line"])
def test_a_header_that_never_ends_is_refused_after_a_bounded_read(endless):
    identity = Identity.generate()
    grease = b"-> grease-" + b"x" * 20 + b"\n" + b"A" * 43 + b"\n"
    tails = {"stanzas": itertools.repeat(grease),  # stanza after stanza
             "body": itertools.chain([b"-> grease\n"], itertools.repeat(b"A" * 64 + b"\n")),  # one endless body
             "line": itertools.repeat(b"-> " + b"x" * 4096)}  # one line without an end
    # 1,024 pieces (a few MiB): a reader without its caps fails the byte count below rather than hanging
    chunks, taken = _counting(itertools.chain([b"age-encryption.org/v1\n"], itertools.islice(tails[endless], 1024)))
    with pytest.raises(AgeError, match="header"):
        list(decrypt(chunks, [identity]))
    assert sum(taken) < MAX_HEADER + 2 * 4096


def test_docs_state_the_caps():
    doc = open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "SECURITY.md")).read()
    assert f"at most {MAX_STANZAS} stanzas and {MAX_HEADER // 1024} KiB of header" in " ".join(doc.split())


def test_many_grease_stanzas_up_to_the_cap_still_open():
    """The cap leaves room for real files: our own file with grease added up to MAX_STANZAS stanzas opens (its MAC
    fails, as the header was changed — but only after every stanza was parsed and the file key found)."""
    identity = Identity.generate()
    sealed = b"".join(encrypt([b"payload"], [identity.recipient]))
    intro, rest = sealed.split(b"\n", 1)
    grease = b"".join(b"-> grease-%d\n\n" % i for i in range(MAX_STANZAS - 1))
    with pytest.raises(AgeError, match="MAC mismatch"):
        list(decrypt([intro + b"\n" + grease + rest], [identity]))
    over = b"".join(b"-> grease-%d\n\n" % i for i in range(MAX_STANZAS))
    with pytest.raises(AgeError, match=f"over {MAX_STANZAS} stanzas"):
        list(decrypt([intro + b"\n" + over + rest], [identity]))
    assert b"".join(decrypt([sealed], [identity])) == b"payload"


def test_an_identity_file_other_users_can_read_is_refused(tmp_path):
    identity = Identity.generate()
    path = tmp_path / "host.agekey"
    path.write_text(f"# created: today\n{identity.text}\n")
    for mode in (0o644, 0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(AgeError) as refused:
            read_identities(path)
        message = str(refused.value)
        assert str(path) in message and f"chmod 600 {path}" in message and f"{mode:04o}" in message
        assert identity.text not in message and identity.text.lower() not in message
    os.chmod(path, 0o600)
    assert read_identities(path) == [identity]
    os.chmod(path, 0o400)
    assert read_identities(path) == [identity]
