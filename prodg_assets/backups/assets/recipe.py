"""The backup assets: one daily partition per day and target — `postgres_backup` (pg_dumpall), `minio_backup` (the
object mirror) and `config_backup` (the config tree as deployed) — each a set of encrypted objects in the off-site
store and its manifest, written last. Every target's asset (these and volume_assets') follows one recipe,
`run_partition`, and brings only its own `produce`: what it uploads and the manifest naming it. The work is in
capture/postgres/stream/mirror/manifest/retention; this module turns it into materialisations, metadata and data
versions."""

import datetime
import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import dagster as dg

from ...agekeys import AgeError
from ...contract import (
    META_MANIFEST_KEY,
    META_MANIFEST_SHA256,
)
from ...engine.facts import DataSource, container_source
from ...gitops.repo import ConfigRepo
from ...secret_source import redact
from ...settings import BackupSettings, BackupTarget
from ...streams import ProducerFailed
from ..capture.policy import Capture, LateCapture, begin_capture, earlier_capture
from ..format.signing import ManifestSigner, SigningError
from ..store.client import BackupStore
from ..store.keys import manifest_key, mirror_base
from ..store.manifest import Manifest, ManifestError, manifest_signer, write_manifest
from ..store.objects import StoreError, UploadResult
from ..store.retention import prune, prune_content

STALE_UPLOAD_AGE = datetime.timedelta(hours=6)


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def scrubber(store: BackupStore, values: Mapping[str, str]) -> Callable[[str], str]:
    return lambda text: store.scrub(redact(text, values))


def described(exc: BaseException) -> str:
    """The exception's message and its notes (what the clean-up after it could not do), one line each."""
    return "\n".join([str(exc), *(str(n) for n in getattr(exc, "__notes__", None) or [])])


def running_source(client, spec, what: str, day: str, verb: str = "captured") -> DataSource:
    """The service's container as the capture's source; a dg.Failure when it does not run (nothing is `verb`)."""
    source = container_source(client, spec.container_name)
    if not source.running:
        condition = "does not exist" if not source.image_id else "is not running"
        raise dg.Failure(description=f"{what} backup of {day}: the {spec.name} service's container "
                                     f"{spec.container_name} {condition}; nothing was {verb} or uploaded "
                                     f"(start it, then re-run this partition)", metadata={"source": source.description})
    return source


class PartitionKept(StoreError):
    """The partition's manifest is written (the day is backed up), and what came after it failed: removing what
    earlier runs of the day left, or the target's retention."""


def backup_failure(what: str, day: str, exc: BaseException, scrub: Callable[[str], str],
                   lost: str = "nothing was kept", **metadata) -> dg.Failure:
    """The dg.Failure of a backup that failed: a late day refused as it says; a day whose manifest was written and
    whose tidying failed, as kept; anything else with `lost` and what the clean-up could not do (secrets scrubbed)."""
    if isinstance(exc, LateCapture):
        return dg.Failure(description=str(exc))
    if isinstance(exc, PartitionKept):
        return dg.Failure(description=f"{what} backup of {day}: {scrub(described(exc))}", metadata=metadata)
    return dg.Failure(description=f"{what} backup of {day} failed; {lost}: {scrub(described(exc))}",
                      metadata=metadata)


def clean_partition(store: BackupStore, prefix: str, day: str, log) -> int:
    """Before a partition is backed up: abort every upload left under its own prefix (a failed run that could not
    abort it, because the store was down), and the target's uploads older than STALE_UPLOAD_AGE. Returns how many
    of the partition's own were aborted."""
    mine = store.abort_uploads(f"{prefix}{day}/")
    if mine:
        log.warning(f"aborted {len(mine)} unfinished uploads a failed backup of {day} left behind: "
                    f"{', '.join(mine[:5])}")
    store.abort_stale_uploads(prefix, STALE_UPLOAD_AGE)
    return len(mine)


def data_version(manifest: Manifest) -> str:
    """The partition's data version: the stored object's sha256; for several objects, the sha256 of their keys and
    sha256s (so an unchanged re-record keeps it, and a new capture changes it)."""
    if len(manifest.objects) == 1:
        return manifest.objects[0].sha256
    listing = "\n".join(f"{e.object_key} {e.sha256}" for e in sorted(manifest.objects, key=lambda e: e.object_key))
    return hashlib.sha256(listing.encode()).hexdigest()


def partition_metadata(manifest: Manifest, manifest_up: UploadResult, **extra) -> dict:
    """What every target's materialisation records: where the day is, what it holds, and its lineage."""
    single = manifest.objects[0] if len(manifest.objects) == 1 else None
    return {
        "commit": manifest.commit, "commit_source": manifest.commit_source, "source": manifest.source,
        "object_key": single.object_key if single else manifest_up.key,
        "raw_bytes": manifest.raw_bytes, "bytes": manifest.bytes,
        "sha256": single.sha256 if single else manifest_up.sha256,
        "etag": single.etag if single else manifest_up.etag,
        META_MANIFEST_KEY: manifest_up.key, META_MANIFEST_SHA256: manifest_up.sha256,
        "captured_at": manifest.captured_at, "captured_late": manifest.captured_late,
        "encryption": f"age to {', '.join(manifest.recipients)}" if manifest.encrypted else "none",
        "object_lock": manifest.object_lock or "none", "compression": manifest.compression,
        "source_image_id": manifest.image_id, "image_digest": manifest.image_digest or "none",
        **({"late": f"data of {manifest.captured_on} stored as {manifest.partition}"} if manifest.captured_late
           else {}),
        **extra,
    }


def rerecorded(manifest: Manifest, prefix: str) -> dg.MaterializeResult:
    """A day that is over and was captured before: its manifest recorded again, nothing captured anew."""
    raw = manifest.to_json()
    up = UploadResult(manifest_key(prefix, manifest.partition), len(raw),
                      hashlib.sha256(raw).hexdigest(), "", 0, 0.0)
    return dg.MaterializeResult(
        metadata=partition_metadata(manifest, up, recaptured=False,
                                    note=f"the day is over; kept what was captured at {manifest.captured_at}"),
        data_version=dg.DataVersion(data_version(manifest)))


def finish_partition(store: BackupStore, target: BackupTarget, cap: Capture, manifest: Manifest,
                     written: list[str], log, signer: ManifestSigner) -> tuple[UploadResult, int, int]:
    """Write the manifest last, signed by `signer` (the partition is complete from then on); then delete what
    earlier runs of this partition left that the manifest does not name, and apply the target's retention. If the
    manifest cannot be written, this run's objects are deleted again. Returns (manifest upload, superseded objects
    deleted, pruned)."""
    try:
        up = write_manifest(store, target.prefix, manifest, cap.lock, signer)
    except BaseException as exc:
        try:
            store.delete_objects(written)
        except Exception as cleanup:  # the original failure matters more; say what was left behind
            exc.add_note(f"{len(written)} objects of {cap.day} written without a manifest could not be deleted: "
                         f"{cleanup}")
        raise
    keep = set(written) | {up.key}
    try:
        superseded = [o.key for o in store.list(mirror_base(target.prefix, cap.day)) if o.key not in keep]
        if superseded:
            store.delete_objects(superseded)
        pruned = prune(store, target, _today(), keep, log)
        if target.method == "s3_mirror":
            pruned += prune_content(store, target.prefix, log)
    except StoreError as exc:
        raise PartitionKept(f"kept — its manifest {up.key} is written — but tidying the store after it failed "
                            f"(earlier runs' objects of the day and the retention stay until the next run): "
                            f"{exc}") from None
    return up, len(superseded), pruned


def partition_manifest(target: BackupTarget, cap: Capture, source: Optional[DataSource], source_text: str,
                       compression: str, entries, **extra) -> Manifest:
    return Manifest(target.name, cap.day, cap.captured_at.isoformat(timespec="seconds"), cap.commit,
                    cap.commit_source, source_text, source.image_id if source else "",
                    source.image_digest if source else "", compression, cap.fingerprints, tuple(entries), cap.late,
                    cap.lock_text, extra)


@dataclass
class Produced:
    """What a target's capture hands back to run_partition: the day's manifest, the objects it names, the lines of
    the materialisation's own metadata (given the manifest's upload) and a line for the log."""
    manifest: Manifest
    written: list[str]
    metadata: Callable[[UploadResult], dict]
    note: str = ""


CAPTURE_ERRORS = (LateCapture, ProducerFailed, StoreError, AgeError, SigningError, ManifestError)


def run_partition(context: dg.AssetExecutionContext, what: str, settings: BackupSettings, target: BackupTarget,
                  store: BackupStore, repo: ConfigRepo, managed: list[str], scrub: Callable[[str], str],
                  produce: Callable[[Capture, Any], Produced], prepare: Callable[[], Any] = lambda: None,
                  failure: Optional[dict] = None, lost: str = "nothing was kept") -> dg.MaterializeResult:
    """The one recipe of a day's backup, whatever the target: the signer first (a day it cannot sign is no backup),
    `prepare()` (the source must be there), the capture begun (a day that is over is refused unless forced), a day
    captured before recorded again instead, the partition's unfinished uploads aborted, then `produce(capture,
    prepared)` — the target's own work: its objects uploaded and its manifest — and the manifest written last,
    earlier runs' leftovers and the retention after it. Any failure is told by backup_failure, with `lost` and
    `failure` (which `produce` may fill in: the object it was writing)."""
    day = context.partition_key
    failure = {} if failure is None else failure
    try:
        signer = manifest_signer(store)
        prepared = prepare()
        cap = begin_capture(context, settings, target, store, repo, managed)
        earlier = earlier_capture(context, cap, store, target)
        if earlier is not None:
            return rerecorded(earlier, target.prefix)
        aborted = clean_partition(store, target.prefix, day, context.log)
        produced = produce(cap, prepared)
        up, superseded, pruned = finish_partition(store, target, cap, produced.manifest, produced.written,
                                                  context.log, signer)
    except CAPTURE_ERRORS as exc:
        raise backup_failure(what, day, exc, scrub, lost=lost, **failure) from None
    if produced.note:
        context.log.info(produced.note)
    return dg.MaterializeResult(
        metadata=partition_metadata(produced.manifest, up, **produced.metadata(up), pruned_objects=pruned,
                                    superseded_deleted=superseded, aborted_uploads=aborted),
        data_version=dg.DataVersion(data_version(produced.manifest)))
