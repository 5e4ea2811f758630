"""The MinIO mirror, content-addressed: every object of every bucket of an S3 API is stored once by the sha256 of its
bytes (`<prefix>objects/<ab>/<sha256>.age`, encrypted on the way), and each day's manifest lists what the buckets
held then — bucket, key, ETag, size, content sha256 and the stored object that holds it. An object unchanged since a
kept day (same bucket, key, ETag and size) is not even read; one whose content is already stored under another name
is read (to hash it) but not uploaded. An unchanged day uploads its manifest alone. Retention deletes a stored object
only when no kept manifest names it (retention.prune_content). The caller writes the manifest last."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Iterable, Iterator, Optional, Sequence

from ...agekeys import Recipient
from ...streams import ProducerFailed
from ..format.crypt import encrypt
from ..store.client import BackupStore, S3Source
from ..store.keys import MANIFEST_NAME, content_key, key_date
from ..store.manifest import Entry, Manifest
from ..store.objects import ObjectLock

COMPRESSION = "none"  # objects are stored as MinIO holds them (media is already compressed), encrypted


@dataclass
class ContentIndex:
    """What the kept days already store: by content sha256, and by source object (bucket, key, ETag, size)."""

    by_content: dict[str, Entry] = field(default_factory=dict)
    by_source: dict[tuple[str, str, str, int], Entry] = field(default_factory=dict)
    stored: set[str] = field(default_factory=set)  # every key under the prefix (no kept day may name some of them)

    @classmethod
    def of(cls, manifests: Iterable[Manifest], stored: set[str]) -> "ContentIndex":
        """From the kept days' manifests, oldest first, counting only objects the store still holds."""
        index = cls(stored=set(stored))
        for manifest in sorted(manifests, key=lambda m: m.partition):
            for e in manifest.objects:
                if e.content_sha256 and e.object_key in stored:
                    index.add(e)
        return index

    def add(self, entry: Entry) -> None:
        self.by_content[entry.content_sha256] = entry
        self.by_source[(entry.bucket, entry.key, entry.source_etag, entry.raw_bytes)] = entry


@dataclass(frozen=True)
class MirrorResult:
    entries: tuple[Entry, ...]
    written: list[str]  # stored objects this run uploaded (deleted again if the day fails)
    buckets: tuple[str, ...]
    reused: int  # objects the day names that were already stored
    uploaded_bytes: int  # stored bytes this run uploaded


def stored_content(store: BackupStore, prefix: str, exclude_day: str = "") -> ContentIndex:
    """The content index of what the store holds under `prefix`: one listing and one GET per kept day's manifest
    (`exclude_day`: the day being backed up again, whose old manifest is replaced)."""
    from ..store.manifest import read_manifests

    listed = {o.key for o in store.list(prefix)}
    manifests = sorted(k for k in listed if k.endswith(f"/{MANIFEST_NAME}") and key_date(k, prefix)
                       and not k.startswith(f"{prefix}{exclude_day}/"))
    return ContentIndex.of((r.manifest for r in read_manifests(store, manifests).values() if r.manifest), listed)


def _hashed(chunks: Iterable[bytes], digest, into: list[int]) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        into[0] += len(chunk)
        yield chunk


def content_sha256(source: S3Source, bucket: str, key: str) -> tuple[str, int]:
    digest, size = hashlib.sha256(), [0]
    for _ in _hashed(source.stream(bucket, key), digest, size):
        pass
    return digest.hexdigest(), size[0]


def mirror_s3(source: S3Source, store: BackupStore, prefix: str, recipients: Sequence[Recipient] = (),
              lock: Optional[ObjectLock] = None, index: Optional[ContentIndex] = None) -> MirrorResult:
    """Every object of every bucket of `source` stored by content under `prefix` (see the module), `index` saying
    what is stored already. On failure the objects this run uploaded are deleted again."""
    index = index or ContentIndex()
    entries: list[Entry] = []
    written: list[str] = []
    reused = uploaded = 0
    buckets = source.bucket_names()
    try:
        for bucket in buckets:
            for obj in source.objects(bucket):
                known = index.by_source.get((bucket, obj.key, obj.etag, obj.size))
                if known is None:
                    sha, size = content_sha256(source, bucket, obj.key)
                    known = index.by_content.get(sha)
                if known is not None:
                    entries.append(replace(known, bucket=bucket, key=obj.key, source_etag=obj.etag))
                    reused += 1
                    continue
                dest = content_key(prefix, sha, bool(recipients))
                if dest in index.stored:
                    # stored already, but by no day the index read (a failed run's, an unreadable manifest's):
                    # never overwritten (a day may name it), described from the store instead
                    head = store.head(dest)
                    stored_sha, stored_size = store.sha256_of(dest, head.version_id if head else "")
                    entry = Entry(dest, size, stored_size, stored_sha, head.etag if head else "", bucket, obj.key,
                                  obj.etag, sha, head.version_id if head else "")
                    entries.append(entry)
                    index.add(entry)
                    reused += 1
                    continue
                digest, raw = hashlib.sha256(), [0]
                data = _hashed(source.stream(bucket, obj.key), digest, raw)
                up = store.upload_stream(dest, encrypt(data, recipients) if recipients else data,
                                         metadata={"content-sha256": sha}, lock=lock)
                written.append(dest)
                if digest.hexdigest() != sha:
                    raise ProducerFailed(f"{bucket}/{obj.key} changed while it was being backed up (its bytes hashed "
                                         f"to {sha} and then to {digest.hexdigest()}); run the backup again")
                entry = Entry(dest, raw[0], up.bytes, up.sha256, up.etag, bucket, obj.key, obj.etag, sha,
                              up.version_id)
                entries.append(entry)
                index.add(entry)
                index.stored.add(dest)
                uploaded += up.bytes
        if lock is not None:
            # an object a new day names must be kept as long as that day is: its lock is moved to the day's date
            uploaded_now = set(written)
            for key, version in sorted({(e.object_key, e.version_id) for e in entries}):
                if key not in uploaded_now:
                    store.extend_lock(key, lock, version)
    except BaseException as exc:
        if written:
            try:
                store.delete_objects(written)
            except Exception as cleanup:  # the original failure matters more; say what was left behind
                exc.add_note(f"{len(written)} objects stored under {prefix} could not be deleted: {cleanup}")
        raise
    return MirrorResult(tuple(entries), written, tuple(buckets), reused, uploaded)
