"""The MinIO mirror: every object of every bucket of an S3 API copied object by object into the store, each encrypted
on the way (age) when recipients are given; the caller writes the partition's manifest last (a partition without
its manifest is not a backup)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence

from ..agekeys import Recipient
from .crypt import encrypt
from .keys import mirror_key
from .manifest import Entry
from .store import BackupStore, ObjectLock, S3Source

COMPRESSION = "none"  # objects are stored as MinIO holds them (media is already compressed), encrypted


@dataclass(frozen=True)
class MirrorResult:
    entries: tuple[Entry, ...]
    written: list[str]
    buckets: tuple[str, ...]


def _counted(chunks: Iterable[bytes], into: list[int]) -> Iterator[bytes]:
    for chunk in chunks:
        into[0] += len(chunk)
        yield chunk


def mirror_s3(source: S3Source, store: BackupStore, prefix: str, date: str, recipients: Sequence[Recipient] = (),
              lock: Optional[ObjectLock] = None) -> MirrorResult:
    """Copy every object of every bucket of `source` to `<prefix><date>/<bucket>/<key>[.age]`, encrypted to
    `recipients` when there are any, under `lock` when given.

    Object by object rather than one archive, because a restore or an audit then deals with single objects (fetch
    one file back, verify one checksum, list sizes) without unpacking a day's tarball. On failure the objects this
    run copied are deleted again."""
    entries: list[Entry] = []
    written: list[str] = []
    buckets = source.bucket_names()
    try:
        for bucket in buckets:
            for obj in source.objects(bucket):
                dest = mirror_key(prefix, date, bucket, obj.key, bool(recipients))
                raw = [0]
                data = _counted(source.stream(bucket, obj.key), raw)
                up = store.upload_stream(dest, encrypt(data, recipients) if recipients else data,
                                         metadata={"source-bucket": bucket, "source-etag": obj.etag}, lock=lock)
                written.append(dest)
                entries.append(Entry(dest, raw[0], up.bytes, up.sha256, up.etag, bucket, obj.key, obj.etag))
    except BaseException as exc:
        if written:
            try:
                store.delete_objects(written)
            except Exception as cleanup:  # the original failure matters more; say what was left behind
                exc.add_note(f"{len(written)} objects copied under {prefix}{date}/ could not be deleted: {cleanup}")
        raise
    return MirrorResult(tuple(entries), written, tuple(buckets))
