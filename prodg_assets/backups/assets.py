"""The backup assets: one daily partition per day and target — `postgres_backup` (pg_dumpall), `minio_backup` (the
object mirror) and `config_backup` (the config tree as deployed) — each a set of encrypted objects in the off-site
store and its manifest, written last. Every target's asset (these and volume_assets') follows one recipe,
`run_partition`, and brings only its own `produce`: what it uploads and the manifest naming it. The work is in
capture/postgres/stream/mirror/manifest/retention; this module turns it into materialisations, metadata and data
versions."""

import datetime
import hashlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

import dagster as dg

from ..contract import (
    BACKUP_GROUP,
    CONFIG_BACKUP,
    META_MANIFEST_KEY,
    META_MANIFEST_SHA256,
    MINIO_BACKUP,
    POSTGRES_BACKUP,
    TARGET_TAG,
    service_pool,
)
from ..agekeys import AgeError
from ..desired import DesiredState
from ..desired.interpolate import env_value
from ..engine.client import DockerEngine
from ..engine.exec import ProducerFailed
from ..engine.facts import DataSource, container_source
from ..engine.secrets import SecretSource, redact
from ..gitops.repo import ConfigRepo, git_archive_chunks
from ..settings import BackupSettings, BackupTarget
from .capture import Capture, LateCapture, begin_capture, earlier_capture
from .keys import config_key, manifest_key, mirror_base, postgres_key
from .manifest import Manifest, ManifestError, manifest_signer, write_manifest
from .mirror import COMPRESSION as MIRROR_COMPRESSION
from .mirror import minio_endpoint, mirror_s3, stored_content
from .postgres import census, pg_dumpall_chunks
from .retention import prune, prune_content
from .signing import ManifestSigner, SigningError
from .store import BackupStore, S3Source, StoreError, UploadResult
from .stream import stream_backup

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


class PostgresBackupConfig(dg.Config):
    lock_wait_timeout_s: int = 300  # a table locked longer than this fails the dump instead of stalling it
    census_lock_timeout_s: int = 30  # a database whose tables stay locked longer is recorded as uncounted
    # pg_dumpall in a helper container from the service's image, out through a FIFO under the deploy root (an Engine
    # on this machine only); False: inside the service's container through the exec API (slower, needs no mount)
    dump_in_helper: bool = True


def service_assets(state: DesiredState) -> list[str]:
    return [spec.asset for spec in state.services.values()]


def build_postgres_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                          target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services[target.service]
    prefix = target.prefix
    managed = service_assets(state)

    @dg.asset(name=POSTGRES_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions,
              deps=[dg.AssetKey(spec.asset)], pool=service_pool(spec.asset), kinds={"postgres", "s3"},
              tags={TARGET_TAG: target.name})
    def postgres_backup(context: dg.AssetExecutionContext, config: PostgresBackupConfig, docker: DockerEngine,
                        repo: ConfigRepo, secrets: SecretSource, backup_store: BackupStore) -> dg.MaterializeResult:
        """The whole Postgres cluster of the day: `pg_dumpall` run in a helper container from the postgres service's
        image on its network (its output through a FIFO; or inside the service's container), zstd-compressed,
        encrypted to the recipients of prodg.yaml (age) and streamed into the off-site store as one object
        (`postgres/<day>/pg_dumpall-<HHMMSS>.sql.zst.age`), then the day's manifest. A dump that fails leaves no
        object. Row counts of every table are recorded first, for the restore drill. A day that is over is not
        captured anew unless the run is tagged prodg/capture-late=true. Never runs while the postgres service is
        being deployed (same pool)."""
        values = secrets.values()
        day = context.partition_key
        failure = {"object_key": ""}

        def produce(cap: Capture, source: DataSource) -> Produced:
            db_user = env_value(spec, "POSTGRES_USER", values) or "postgres"
            key = failure["object_key"] = postgres_key(prefix, day, cap.captured_at, settings.compression,
                                                       settings.encrypted)
            counts = census(docker.client.api, spec.container_name, db_user,
                            lock_timeout_s=config.census_lock_timeout_s)
            helper_root = repo.deployed_dir if config.dump_in_helper and docker.address.startswith("unix://") else ""
            dump = pg_dumpall_chunks(docker.client.api, spec.container_name,
                                     password=env_value(spec, "POSTGRES_PASSWORD", values), db_user=db_user,
                                     lock_wait_timeout_s=config.lock_wait_timeout_s, helper_root=helper_root,
                                     port=int(port) if (port := env_value(spec, "PGPORT", values)).isdigit()
                                     else 5432)
            try:
                result = stream_backup(backup_store, key, dump, settings.compression,
                                       {"partition": day, "source": spec.container_name, "commit": cap.commit},
                                       cap.recipients, cap.lock)
            finally:
                dump.close()  # a failed upload ends pg_dumpall now (SIGPIPE), not when the traceback is collected
            manifest = partition_manifest(target, cap, source, source.description, result.compression,
                                          [result.entry()], row_counts=counts.as_json())
            return Produced(manifest, [key], lambda up: dict(
                duration_s=round(result.duration_s, 3), throughput_mb_s=result.throughput_mb_s,
                dumped_through="a helper container (FIFO)" if helper_root else "the exec API",
                databases=", ".join(counts.databases), tables=len(counts.rows), rows=sum(counts.rows.values()),
                uncounted_databases=", ".join(counts.uncounted) or "none",
                row_counts=dg.MetadataValue.json(counts.as_json())),
                f"{key}: {result.raw_bytes} bytes dumped, {result.bytes} stored")

        return run_partition(context, "postgres", settings, target, backup_store, repo, managed,
                             scrubber(backup_store, values), produce, failure=failure,
                             prepare=lambda: running_source(docker.client, spec, "postgres", day, "dumped"))

    return postgres_backup


def build_minio_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                       target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services.get(target.service or "")
    deps = [dg.AssetKey(spec.asset)] if spec else []
    container_name = spec.container_name if spec else ""
    prefix = target.prefix
    managed = service_assets(state)

    # One run at a time per target (each run cleans its partition's unfinished uploads first), and never while MinIO
    # itself is being deployed.
    @dg.asset(name=MINIO_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions, deps=deps,
              pool=service_pool(spec.asset) if spec else "prodg_backup_minio",
              kinds={"s3"}, tags={TARGET_TAG: target.name})
    def minio_backup(context: dg.AssetExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                     secrets: SecretSource, backup_store: BackupStore, minio_source: S3Source) \
            -> dg.MaterializeResult:
        """Every bucket and object of MinIO, stored once by content (encrypted, `minio/objects/<ab>/<sha256>.age`;
        an object a kept day already stores is not uploaded again), then `minio/<day>/manifest.json` (bucket, key,
        ETag, sizes, content sha256 and the stored object of each) written last. A failed day leaves no manifest
        and removes what it uploaded."""
        values = secrets.values()
        source_api = minio_source.with_secrets(values, minio_endpoint(docker, spec))
        store_scrub = scrubber(backup_store, values)

        def scrub(text: str) -> str:
            return source_api.scrub(store_scrub(text))

        day = context.partition_key
        source = container_source(docker.client, container_name) if container_name else None
        source_text = (f"{source.description}, S3 API {source_api.endpoint_url}" if source and source.image_id
                       else f"S3 API {source_api.endpoint_url}")

        def produce(cap: Capture, _) -> Produced:
            started = time.monotonic()
            result = mirror_s3(source_api, backup_store, prefix, cap.recipients, cap.lock,
                               stored_content(backup_store, prefix, exclude_day=day))
            manifest = partition_manifest(target, cap, source, source_text, MIRROR_COMPRESSION, result.entries,
                                          buckets=list(result.buckets), object_count=len(result.entries),
                                          reused_objects=result.reused, uploaded_bytes=result.uploaded_bytes)

            def metadata(up: UploadResult) -> dict:
                duration = time.monotonic() - started
                return dict(duration_s=round(duration, 3),
                            throughput_mb_s=round(manifest.raw_bytes / 1e6 / duration, 3) if duration > 0 else 0.0,
                            object_count=len(result.entries), manifest_bytes=up.bytes,
                            buckets=", ".join(result.buckets), reused_objects=result.reused,
                            uploaded_objects=len(result.written), uploaded_bytes=result.uploaded_bytes + up.bytes)

            return Produced(manifest, result.written, metadata,
                            f"{manifest_key(prefix, day)}: {len(result.entries)} objects, {manifest.raw_bytes} bytes")

        return run_partition(context, "minio", settings, target, backup_store, repo, managed, scrub, produce,
                             failure={"source": source_text}, lost="no manifest was written")

    return minio_backup


def build_config_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                        target: BackupTarget) -> dg.AssetsDefinition:
    prefix = target.prefix
    managed = service_assets(state)

    @dg.asset(name=CONFIG_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions, kinds={"git"},
              pool="prodg_backup_configs", tags={TARGET_TAG: target.name})
    def config_backup(context: dg.AssetExecutionContext, repo: ConfigRepo,
                      backup_store: BackupStore) -> dg.MaterializeResult:
        """The config tree live on the host — `git archive` of the config folder at the commit the newest deploy
        materialised (else the run's `prodg/commit` tag, else the tracked branch's head) — encrypted, as
        `configs/<day>/config-<sha12>.tar.zst.age`, then the day's manifest."""
        day = context.partition_key
        failure = {"object_key": ""}

        def produce(cap: Capture, _) -> Produced:
            if not cap.commit:
                raise dg.Failure(description=f"config backup of {day}: {repo.path} is not a git repository")
            key = failure["object_key"] = config_key(prefix, day, cap.commit, settings.compression,
                                                     settings.encrypted)
            source = f"{repo.path}:{repo.config_subdir}/ @ {cap.commit}"
            result = stream_backup(backup_store, key, git_archive_chunks(repo.path, cap.commit, repo.config_subdir),
                                   settings.compression, {"partition": day, "commit": cap.commit}, cap.recipients,
                                   cap.lock)
            manifest = partition_manifest(target, cap, None, source, result.compression, [result.entry()])
            return Produced(manifest, [key], lambda up: dict(duration_s=round(result.duration_s, 3),
                                                            throughput_mb_s=result.throughput_mb_s))

        return run_partition(context, "config", settings, target, backup_store, repo, managed, backup_store.scrub,
                             produce, failure=failure)

    return config_backup
