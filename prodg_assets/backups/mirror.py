"""The MinIO mirror: every object of every bucket of an S3 API copied object by object into the store, then the
partition's manifest written last (a partition without its manifest is not a backup)."""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import dataclass
from typing import Optional

from .keys import manifest_key, mirror_base
from .store import BackupStore, S3Source


@dataclass(frozen=True)
class MirrorResult:
    manifest_key: str
    manifest_sha256: str
    manifest_bytes: int
    manifest_etag: str
    objects: int
    bytes: int
    buckets: tuple[str, ...]
    duration_s: float
    stale_deleted: int = 0

    @property
    def throughput_mb_s(self) -> float:
        return round(self.bytes / 1e6 / self.duration_s, 3) if self.duration_s > 0 else 0.0


def mirror_s3(source: S3Source, store: BackupStore, prefix: str, date: str,
              now: Optional[datetime.datetime] = None) -> MirrorResult:
    """Copy every object of every bucket of `source` to `<prefix><date>/<bucket>/<key>`, then write the manifest
    (bucket, key, size, sha256 and ETag per object) last: a partition without its manifest is not a backup.

    Object by object rather than one archive, because a restore or an audit then deals with single objects (fetch
    one file back, verify one checksum, list sizes) without unpacking a day's tarball, and unchanged objects stay
    byte-identical from day to day, which deduplicating or copy-on-write storage and a later incremental mirror can
    exploit. On failure the objects this run copied are deleted again."""
    started = time.monotonic()
    base = mirror_base(prefix, date)
    entries: list[dict] = []
    written: list[str] = []
    buckets = source.bucket_names()
    try:
        for bucket in buckets:
            for obj in source.objects(bucket):
                dest = f"{base}{bucket}/{obj.key}"
                up = store.upload_stream(dest, source.stream(bucket, obj.key),
                                         metadata={"source-bucket": bucket, "source-etag": obj.etag})
                written.append(dest)
                entries.append({"bucket": bucket, "key": obj.key, "size": up.bytes, "sha256": up.sha256,
                                "etag": up.etag, "source_etag": obj.etag, "object_key": dest})
        manifest = {
            "format": 1, "partition": date,
            "created_at": (now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds"),
            "source": source.endpoint_url, "buckets": buckets, "object_count": len(entries),
            "bytes": sum(e["size"] for e in entries), "objects": entries,
        }
        up = store.put_bytes(manifest_key(prefix, date), json.dumps(manifest, indent=1, sort_keys=True).encode(),
                             metadata={"object-count": str(len(entries))}, content_type="application/json")
    except BaseException as exc:
        if written:
            try:
                store.delete_objects(written)
            except Exception as cleanup:  # the original failure matters more; say what was left behind
                exc.add_note(f"{len(written)} objects copied under {base} could not be deleted: {cleanup}")
        raise
    keep = set(written) | {up.key}
    stale = [o.key for o in store.list(base) if o.key not in keep]  # left by an earlier run of this partition
    if stale:
        store.delete_objects(stale)
    return MirrorResult(up.key, up.sha256, up.bytes, up.etag, len(entries), sum(e["size"] for e in entries),
                        tuple(buckets), time.monotonic() - started, len(stale))
