"""The backup assets: one daily partition per day and target, each a verified object in the off-site store.

`build_backup_assets(state)` hands back this domain's slice of definitions — the assets, their checks, the 03:00
UTC schedule and the jobs — and `build_backup_resources(state)` the two S3 endpoints they need. The work itself is
in pipeline/retention/audit/restore; this module turns it into materialisations, metadata and check results.
"""

import datetime
import os
import re
import secrets as pysecrets
import warnings
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

import dagster as dg

from ..engine.docker_engine import DockerEngine
from ..engine.docker_engine import errors as docker_errors
from ..engine.secrets import SecretSource, redact
from ..gitops.repo import ConfigRepo
from ..layers.common import run_commit
from ..spec import DesiredState, ServiceSpec
from ..spec.model import SECRET_REF, BackupTarget
from .audit import OK, AuditTarget, Recorded, audit_listing, audit_store, check_mirror, check_object, days
from .pipeline import (
    MANIFEST_NAME,
    Census,
    ProducerFailed,
    census,
    config_key,
    git_archive_chunks,
    mirror_s3,
    pg_dumpall_chunks,
    postgres_key,
    stream_backup,
)
from .restore import DEFAULT_SCRATCH_IMAGE, RestoreFailed, remove_stale_scratch, restore_drill
from .retention import plan_retention
from .store import BackupStore, S3Source, StoreError

BACKUP_GROUP = "backups"
KIND_TAG = "prodg/kind"
BACKUP_KIND = "backup"
POSTGRES_BACKUP = "postgres_backup"
MINIO_BACKUP = "minio_backup"
CONFIG_BACKUP = "config_backup"
RESTORE_DRILL = "postgres_restore_drill"
BACKUP_AUDIT = "backup_audit"
OBJECT_INTACT = "object_intact"
NO_MISSING_DAYS = "no_missing_days"
FRESH = "fresh"
AUDIT_CLEAN = "audit_clean"
BACKUP_JOB = "backup_job"
AUDIT_JOB = "backup_audit_job"
BACKUP_SCHEDULE = "backup_schedule"
ASSET_OF_METHOD = {"pg_dumpall": POSTGRES_BACKUP, "s3_mirror": MINIO_BACKUP, "config_archive": CONFIG_BACKUP}
MARKER_OF_METHOD = {"s3_mirror": MANIFEST_NAME}  # a mirror partition is complete once its manifest is written
STALE_UPLOAD_AGE = datetime.timedelta(hours=6)
STALE_SCRATCH_AGE = datetime.timedelta(hours=6)


# -- settings ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BackupSettings:
    """prodg.yaml `backups:`, typed for the assets."""

    start_date: str
    cron: str
    compression: str
    freshness_hours: float
    targets: Mapping[str, BackupTarget]  # by asset name

    @property
    def first_day(self) -> datetime.date:
        return datetime.date.fromisoformat(self.start_date)


def backup_settings(state: DesiredState) -> BackupSettings:
    b = state.settings.backups or {}
    start = b.get("start_date") or datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    targets = {ASSET_OF_METHOD[t.method]: t for t in state.settings.backup_targets if t.method in ASSET_OF_METHOD}
    if b.get("timezone", "UTC") != "UTC":
        raise ValueError(f"prodg.yaml backups.timezone: the backup partitions are UTC days, got {b['timezone']!r}")
    return BackupSettings(str(start)[:10], str(b.get("schedule") or "0 3 * * *"), str(b.get("compression", "zstd")),
                          float(b.get("freshness_hours", 26)), targets)


def daily_at(cron: str) -> tuple[int, int]:
    """(hour, minute) of a daily cron expression `M H * * *`."""
    match = re.fullmatch(r"\s*(\d{1,2})\s+(\d{1,2})\s+\*\s+\*\s+\*\s*", cron)
    if not match or int(match.group(1)) > 59 or int(match.group(2)) > 23:
        raise ValueError(f"prodg.yaml backups.schedule must be a daily cron 'M H * * *', got {cron!r}")
    return int(match.group(2)), int(match.group(1))


def env_value(spec: ServiceSpec, name: str, secret_values: Mapping[str, str]) -> str:
    """The service's environment variable `name` as its container gets it (secret references resolved)."""
    value = dict(spec.environment).get(name, "")
    return SECRET_REF.sub(lambda m: secret_values.get(m.group(1), ""), value)


def _secret_name(spec: Optional[ServiceSpec], name: str) -> tuple[str, str]:
    """(literal value, secret name) of an environment variable: one of the two is empty."""
    value = dict(spec.environment).get(name, "") if spec else ""
    ref = SECRET_REF.fullmatch(value)
    return ("", ref.group(1)) if ref else (value, "")


# The backup store's client, tunable from the environment (read when the definitions are built): name → (type,
# default, lowest allowed). A stalled store fails a call after about max_attempts × read timeout, never hangs.
STORE_SETTINGS = {
    "PRODG_BACKUP_CONNECT_TIMEOUT_S": ("connect_timeout_s", float, 10.0, 0.1),
    "PRODG_BACKUP_READ_TIMEOUT_S": ("read_timeout_s", float, 120.0, 0.1),
    "PRODG_BACKUP_MAX_ATTEMPTS": ("max_attempts", int, 5, 1),
    "PRODG_BACKUP_PART_SIZE_MB": ("part_size_mb", int, 16, 5),
}


def store_settings(environ: Mapping[str, str] | None = None) -> dict:
    """The BackupStore fields set by STORE_SETTINGS' environment variables (their defaults when unset)."""
    environ = os.environ if environ is None else environ
    out = {}
    for name, (fld, kind, default, lowest) in STORE_SETTINGS.items():
        raw = (environ.get(name) or "").strip()
        try:
            value = kind(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None
        if value < lowest:
            raise ValueError(f"{name} must be at least {lowest}, got {raw!r}")
        out[fld] = value
    return out


def build_backup_resources(state: DesiredState, environ: Mapping[str, str] | None = None) -> dict:
    """`backup_store` (the off-site bucket; keys from the environment variables prodg.yaml names; timeouts,
    attempts and part size from STORE_SETTINGS) and `minio_source` (MinIO's S3 API where the minio service publishes
    port 9000, with its root credentials)."""
    b = state.settings.backups or {}
    resources: dict = {
        "backup_store": BackupStore(endpoint_url=str(b.get("endpoint_url", "")),
                                    region=str(b.get("region") or "us-east-1"),
                                    bucket=str(b.get("bucket", "")),
                                    access_key_id=dg.EnvVar(str(b.get("access_key_id_env", "B2_KEY_ID"))),
                                    secret_access_key=dg.EnvVar(str(b.get("secret_access_key_env",
                                                                          "B2_KEY_SECRET"))),
                                    **store_settings(environ)),
    }
    target = next((t for t in state.settings.backup_targets if t.method == "s3_mirror"), None)
    spec = state.services.get(target.service) if target and target.service else None
    port = next((p for p in spec.ports if p.container_port == 9000), None) if spec else None
    host = "127.0.0.1" if not port or port.host_ip in ("0.0.0.0", "127.0.0.1", "::") else port.host_ip
    user, user_secret = _secret_name(spec, "MINIO_ROOT_USER")
    _, password_secret = _secret_name(spec, "MINIO_ROOT_PASSWORD")
    resources["minio_source"] = S3Source(endpoint_url=f"http://{host}:{port.host_port if port else 9000}",
                                         access_key_id=user, access_key_id_secret=user_secret,
                                         secret_access_key_secret=password_secret or "MINIO_ROOT_PASSWORD")
    return resources


# -- shared helpers ----------------------------------------------------------------------------------------------------
def _today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def _value(metadata: Mapping, key: str, default=None):
    entry = metadata.get(key)
    return default if entry is None else getattr(entry, "value", entry)


def recorded_metadata(instance: dg.DagsterInstance, asset: str, partition: str) -> Optional[Mapping]:
    """The metadata of the latest materialisation of `asset` for `partition`, or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return records[0].asset_materialization.metadata if records else None


def to_recorded(partition: str, metadata: Mapping, method: str) -> Recorded:
    mirror = method == "s3_mirror"
    return Recorded(partition, str(_value(metadata, "object_key", "")),
                    int(_value(metadata, "manifest_bytes" if mirror else "bytes", -1)),
                    str(_value(metadata, "sha256", "")), str(_value(metadata, "etag", "")),
                    int(_value(metadata, "object_count", 0)) if mirror else None)


def recorded_partitions(instance: dg.DagsterInstance, asset: str, method: str, partitions: list[str]) \
        -> dict[str, Recorded]:
    """Latest recorded materialisation per partition of `asset` among `partitions`."""
    out: dict[str, Recorded] = {}
    for start in range(0, len(partitions), 100):
        batch = partitions[start:start + 100]
        cursor = None
        while True:
            result = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=batch), limit=500,
                cursor=cursor)
            for record in result.records:  # newest first: the first seen per partition wins
                mat = record.asset_materialization
                if mat and mat.partition and mat.partition not in out:
                    out[mat.partition] = to_recorded(mat.partition, mat.metadata, method)
            if not result.has_more:
                break
            cursor = result.cursor
    return out


def container_source(docker: DockerEngine, container: str) -> tuple[str, str, bool]:
    """(source description, image id, running) of a data store's container, from docker inspect."""
    try:
        attrs = docker.client.api.inspect_container(container)
    except docker_errors.NotFound:
        return f"{container} (no such container)", "", False
    image_id = attrs.get("Image", "")
    return f"{container} @ {image_id}", image_id, bool((attrs.get("State") or {}).get("Running"))


def prune(store: BackupStore, target: BackupTarget, today: datetime.date, keep: set[str], log) -> int:
    """Apply the target's retention to its prefix (never the newest successful backup, never `keep`). A store
    error here is logged, not raised: the backup that was just made stands; the next run prunes again."""
    try:
        plan = plan_retention(target.prefix, target.retention_days, today, store.list(target.prefix),
                              MARKER_OF_METHOD.get(target.method), keep)
        if plan.delete:
            dates = sorted({k[len(target.prefix):len(target.prefix) + 10] for k in plan.delete})
            log.info(f"retention {target.retention_days} days: deleting {len(plan.delete)} objects of "
                     f"{', '.join(dates)} under {target.prefix}")
            store.delete_objects(plan.delete)
    except StoreError as exc:
        log.error(f"retention of {target.prefix} failed (the backup itself is kept): {exc}")
        return -1
    if plan.undated:
        log.warning(f"{len(plan.undated)} objects under {target.prefix} carry no partition date and are kept: "
                    f"{', '.join(plan.undated[:5])}")
    return len(plan.delete)


def backup_metadata(commit: str, source: str, key: str, raw_bytes: int, stored: int, sha256: str, etag: str,
                    duration_s: float, throughput: float, pruned: int, **extra) -> dict:
    return {"commit": commit, "source": source, "object_key": key, "raw_bytes": int(raw_bytes),
            "bytes": int(stored), "sha256": sha256, "etag": etag, "duration_s": round(float(duration_s), 3),
            "throughput_mb_s": float(throughput), "pruned_objects": int(pruned), **extra}


def _scrubber(store: BackupStore, values: Mapping[str, str]) -> Callable[[str], str]:
    return lambda text: store.scrub(redact(text, values))


def _described(exc: BaseException) -> str:
    """The exception's message and its notes (what the clean-up after it could not do), one line each."""
    return "\n".join([str(exc), *(str(n) for n in getattr(exc, "__notes__", None) or [])])


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


# -- the backup assets -----------------------------------------------------------------------------------------------
class PostgresBackupConfig(dg.Config):
    lock_wait_timeout_s: int = 300  # a table locked longer than this fails the dump instead of stalling it
    census_lock_timeout_s: int = 30  # a database whose tables stay locked longer is recorded as uncounted


def build_postgres_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                          target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services[target.service]
    prefix = target.prefix

    @dg.asset(name=POSTGRES_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions,
              deps=[dg.AssetKey(spec.asset)], pool=f"prodg_service_{spec.asset}", kinds={"postgres", "s3"},
              tags={"prodg/target": target.name})
    def postgres_backup(context: dg.AssetExecutionContext, config: PostgresBackupConfig, docker: DockerEngine,
                        repo: ConfigRepo, secrets: SecretSource, backup_store: BackupStore) -> dg.MaterializeResult:
        """The whole Postgres cluster of the day: `pg_dumpall` run inside the postgres container, zstd-compressed
        and streamed into the off-site store as one object (`postgres/<day>/pg_dumpall-<HHMMSS>.sql.zst`), its
        sha256 computed on the way. A dump that fails leaves no object. Row counts of every table are recorded
        first, for the restore drill. Never runs while the postgres service is being deployed (same pool)."""
        values = secrets.values()
        scrub = _scrubber(backup_store, values)
        day, now = context.partition_key, datetime.datetime.now(datetime.timezone.utc)
        commit = run_commit(context, repo)
        container = spec.container_name
        source, image_id, running = container_source(docker, container)
        if not running:
            condition = "does not exist" if not image_id else "is not running"
            raise dg.Failure(description=f"postgres backup of {day}: the {target.service} service's container "
                                         f"{container} {condition}; nothing was dumped or uploaded (start it, then "
                                         f"re-run this partition)",
                             metadata={"commit": commit, "source": source, "container": container})
        db_user = env_value(spec, "POSTGRES_USER", values) or "postgres"
        key = postgres_key(prefix, day, now, settings.compression)
        api = docker.client.api
        dump = None
        try:
            aborted = clean_partition(backup_store, prefix, day, context.log)
            counts = census(api, container, db_user, lock_timeout_s=config.census_lock_timeout_s)
            dump = pg_dumpall_chunks(api, container, password=env_value(spec, "POSTGRES_PASSWORD", values),
                                     db_user=db_user, lock_wait_timeout_s=config.lock_wait_timeout_s)
            result = stream_backup(backup_store, key, dump, settings.compression,
                                   {"partition": day, "source": container, "commit": commit})
        except (ProducerFailed, StoreError) as exc:
            raise dg.Failure(description=f"postgres backup of {day} failed; nothing was kept: "
                                         f"{scrub(_described(exc))}",
                             metadata={"commit": commit, "source": source, "object_key": key}) from None
        finally:
            if dump is not None:
                dump.close()  # a failed upload ends pg_dumpall now (SIGPIPE), not when the traceback is collected
        pruned = prune(backup_store, target, _today(), {key}, context.log)
        context.log.info(f"{key}: {result.raw_bytes} bytes dumped, {result.bytes} stored")
        return dg.MaterializeResult(metadata=backup_metadata(
            commit, source, key, result.raw_bytes, result.bytes, result.sha256, result.etag, result.duration_s,
            result.throughput_mb_s, pruned, source_image_id=image_id, compression=result.compression,
            databases=", ".join(counts.databases), tables=len(counts.rows), rows=sum(counts.rows.values()),
            uncounted_databases=", ".join(counts.uncounted) or "none", aborted_uploads=aborted,
            row_counts=dg.MetadataValue.json(counts.as_json())))

    return postgres_backup


def build_minio_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                       target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services.get(target.service or "")
    deps = [dg.AssetKey(spec.asset)] if spec else []
    container_name = spec.container_name if spec else ""
    prefix = target.prefix

    # One run at a time per target (each run cleans its partition's unfinished uploads first), and never while MinIO
    # itself is being deployed.
    @dg.asset(name=MINIO_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions, deps=deps,
              pool=f"prodg_service_{spec.asset}" if spec else "prodg_backup_minio",
              kinds={"s3"}, tags={"prodg/target": target.name})
    def minio_backup(context: dg.AssetExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                     secrets: SecretSource, backup_store: BackupStore, minio_source: S3Source) \
            -> dg.MaterializeResult:
        """Every bucket and object of MinIO, copied object by object to `minio/<day>/<bucket>/<key>` in the
        off-site store, then `minio/<day>/manifest.json` (bucket, key, size, sha256 of each object) written last;
        the manifest's sha256 is the partition's checksum. A failed copy leaves no manifest and removes what it
        copied."""
        values = secrets.values()
        source_api = minio_source.with_secrets(values)
        store_scrub = _scrubber(backup_store, values)

        def scrub(text: str) -> str:
            return source_api.scrub(store_scrub(text))

        day = context.partition_key
        commit = run_commit(context, repo)
        source, image_id, _ = container_source(docker, container_name) if container_name else ("", "", False)
        source = f"{source}, S3 API {minio_source.endpoint_url}" if image_id else f"S3 API {minio_source.endpoint_url}"
        try:
            aborted = clean_partition(backup_store, prefix, day, context.log)
            result = mirror_s3(source_api, backup_store, prefix, day)
        except (ProducerFailed, StoreError) as exc:
            raise dg.Failure(description=f"minio backup of {day} failed; no manifest was written: "
                                         f"{scrub(_described(exc))}", metadata={"commit": commit, "source": source}) \
                from None
        pruned = prune(backup_store, target, _today(), {result.manifest_key}, context.log)
        context.log.info(f"{result.manifest_key}: {result.objects} objects, {result.bytes} bytes")
        return dg.MaterializeResult(metadata=backup_metadata(
            commit, source, result.manifest_key, result.bytes, result.bytes, result.manifest_sha256,
            result.manifest_etag, result.duration_s, result.throughput_mb_s, pruned, source_image_id=image_id,
            object_count=result.objects, manifest_bytes=result.manifest_bytes, buckets=", ".join(result.buckets),
            stale_deleted=result.stale_deleted, aborted_uploads=aborted))

    return minio_backup


def build_config_backup(settings: BackupSettings, partitions: dg.PartitionsDefinition,
                        target: BackupTarget) -> dg.AssetsDefinition:
    prefix = target.prefix

    @dg.asset(name=CONFIG_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions, kinds={"git"},
              pool="prodg_backup_configs", tags={"prodg/target": target.name})
    def config_backup(context: dg.AssetExecutionContext, repo: ConfigRepo,
                      backup_store: BackupStore) -> dg.MaterializeResult:
        """The config tree as deployed — `git archive` of the config folder at the deployed commit (the run's
        `prodg/commit` tag, else the tracked branch's head) — as `configs/<day>/config-<sha12>.tar.zst`."""
        day = context.partition_key
        commit = run_commit(context, repo)
        if not commit:
            raise dg.Failure(description=f"config backup of {day}: {repo.path} is not a git repository")
        key = config_key(prefix, day, commit, settings.compression)
        source = f"{repo.path}:{repo.config_subdir}/ @ {commit}"
        try:
            aborted = clean_partition(backup_store, prefix, day, context.log)
            result = stream_backup(backup_store, key, git_archive_chunks(repo.path, commit, repo.config_subdir),
                                   settings.compression, {"partition": day, "commit": commit})
        except (ProducerFailed, StoreError) as exc:
            raise dg.Failure(description=f"config backup of {day} failed; nothing was kept: "
                                         f"{backup_store.scrub(_described(exc))}") from None
        pruned = prune(backup_store, target, _today(), {key}, context.log)
        return dg.MaterializeResult(metadata=backup_metadata(
            commit, source, key, result.raw_bytes, result.bytes, result.sha256, result.etag, result.duration_s,
            result.throughput_mb_s, pruned, compression=result.compression, aborted_uploads=aborted))

    return config_backup


# -- checks --------------------------------------------------------------------------------------------------------
def build_object_check(asset: str, target: BackupTarget, partitions: dg.PartitionsDefinition) \
        -> dg.AssetChecksDefinition:
    mirror = target.method == "s3_mirror"

    def object_intact(context: dg.AssetCheckExecutionContext, backup_store: BackupStore) -> dg.AssetCheckResult:
        """This partition's backup is in the store as recorded: the object exists with the recorded size, ETag and
        sha256 (x-amz-meta-sha256); for the MinIO mirror, the manifest's own sha256 and every object it names."""
        day = context.partition_key
        metadata = recorded_metadata(context.instance, asset, day)
        if metadata is None:
            return dg.AssetCheckResult(passed=False, metadata={"partition": day,
                                                               "detail": "no materialisation recorded"})
        rec = to_recorded(day, metadata, target.method)
        finding = (check_mirror if mirror else check_object)(backup_store, rec)
        return dg.AssetCheckResult(passed=finding.status == OK, metadata={
            "partition": day, "object_key": rec.object_key, "status": finding.status, "detail": finding.detail})

    # Partitioned asset checks are a preview feature of Dagster 1.13; a per-day check is exactly that, so we use them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(asset=asset, name=OBJECT_INTACT, partitions_def=partitions, blocking=False)(
            object_intact)


def _window(settings: BackupSettings, target: BackupTarget, today: datetime.date) \
        -> tuple[datetime.date, datetime.date]:
    """The days that must have a backup now: from the later of the first partition and the retention cutoff, to
    yesterday (today's partition is not due before tomorrow's 03:00 run)."""
    start = max(settings.first_day, today - datetime.timedelta(days=target.retention_days))
    return start, today - datetime.timedelta(days=1)


def build_window_checks(asset: str, target: BackupTarget, settings: BackupSettings) \
        -> list[dg.AssetChecksDefinition]:
    marker = MARKER_OF_METHOD.get(target.method)

    def listing_audit(store: BackupStore):
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = _window(settings, target, now.date())
        return audit_listing(target.name, target.prefix, store.list(target.prefix), start, end, {}, now,
                             settings.freshness_hours, marker), start, end

    @dg.asset_check(asset=asset, name=NO_MISSING_DAYS, blocking=False)
    def no_missing_days(backup_store: BackupStore) -> dg.AssetCheckResult:
        """Every day of the retention window (up to yesterday) has a backup in the store; missing days are named.
        Uses only listings of the target's prefix."""
        audit, start, end = listing_audit(backup_store)
        missing = audit.missing_days
        return dg.AssetCheckResult(passed=not missing, metadata={
            "window": f"{start} … {end}" if start <= end else "empty (no day due yet)",
            "missing_days": ", ".join(missing) or "none", "missing_count": len(missing),
            "days_checked": len(audit.findings)})

    @dg.asset_check(asset=asset, name=FRESH, blocking=False)
    def fresh(backup_store: BackupStore) -> dg.AssetCheckResult:
        """The newest complete backup of this target is younger than prodg.yaml `backups.freshness_hours`."""
        audit, _, _ = listing_audit(backup_store)
        return dg.AssetCheckResult(passed=audit.fresh, metadata={
            "newest_backup_at": audit.newest_at.isoformat() if audit.newest_at else "none",
            "age_hours": float(audit.age_hours) if audit.age_hours is not None else -1.0,
            "limit_hours": float(settings.freshness_hours)})

    return [no_missing_days, fresh]


# -- the restore drill ---------------------------------------------------------------------------------------------
class RestoreDrillConfig(dg.Config):
    image: str = ""  # scratch image; default: the live postgres container's image (same major version)
    row_count_tolerance: float = 0.0  # relative difference accepted per table (dumps of a busy database)


def build_restore_drill(state: DesiredState, partitions: dg.PartitionsDefinition,
                        target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services[target.service]

    @dg.asset(name=RESTORE_DRILL, group_name=BACKUP_GROUP, partitions_def=partitions,
              deps=[dg.AssetKey(POSTGRES_BACKUP)], kinds={"postgres"}, tags={"prodg/target": target.name})
    def postgres_restore_drill(context: dg.AssetExecutionContext, config: RestoreDrillConfig, docker: DockerEngine,
                               secrets: SecretSource, backup_store: BackupStore) -> dg.MaterializeResult:
        """Proves the day's Postgres backup restores: downloads it, verifies its sha256, restores it into a scratch
        Postgres container (no network, removed afterwards) and compares databases and row counts with the census
        taken at dump time. Fails with the differences."""
        day = context.partition_key
        metadata = recorded_metadata(context.instance, POSTGRES_BACKUP, day)
        if metadata is None:
            raise dg.Failure(description=f"restore drill of {day}: no postgres_backup materialisation recorded")
        key, sha256 = str(_value(metadata, "object_key")), str(_value(metadata, "sha256"))
        expected = Census.from_json(_value(metadata, "row_counts", {}) or {})
        _, live_image, _ = container_source(docker, spec.container_name)
        image = config.image or live_image or DEFAULT_SCRATCH_IMAGE
        db_user = env_value(spec, "POSTGRES_USER", {}) or "postgres"
        for stale in remove_stale_scratch(docker.client, STALE_SCRATCH_AGE):
            context.log.warning(f"removed {stale}, a scratch Postgres left behind by an interrupted drill")
        name = f"prodg-restore-drill-{day}-{os.getpid()}-{pysecrets.token_hex(3)}"
        scrub = _scrubber(backup_store, secrets.values())
        try:
            drill = restore_drill(backup_store, key, sha256, expected, docker.client, image, name, db_user,
                                  config.row_count_tolerance)
        except (RestoreFailed, StoreError, ProducerFailed) as exc:
            raise dg.Failure(description=f"restore drill of {day} ({key}) failed: {scrub(str(exc))}") from None
        findings = "\n".join(f"- {f}" for f in drill.findings) or "none"
        if not drill.passed:
            raise dg.Failure(description=f"restore drill of {day}: {len(drill.findings)} differences from the "
                                         f"census at dump time", metadata={"findings": dg.MetadataValue.md(findings),
                                                                           "object_key": key})
        return dg.MaterializeResult(metadata={
            "object_key": key, "sha256": sha256, "scratch_image": image, "databases": ", ".join(drill.actual.databases),
            "tables": drill.tables, "rows": drill.rows, "sql_bytes": drill.restore.sql_bytes,
            "uncounted_at_dump": ", ".join(expected.uncounted) or "none",
            "duration_s": round(drill.duration_s, 3), "findings": dg.MetadataValue.md(findings)})

    return postgres_restore_drill


# -- the window audit ------------------------------------------------------------------------------------------------
class AuditConfig(dg.Config):
    days: int = 365  # how many days back from yesterday to audit


def build_audit_asset(settings: BackupSettings, asset_names: list[str]) -> dg.AssetsDefinition:
    targets = {a: settings.targets[a] for a in asset_names}

    @dg.asset(name=BACKUP_AUDIT, group_name=BACKUP_GROUP, deps=[dg.AssetKey(a) for a in asset_names],
              kinds={"s3"}, check_specs=[dg.AssetCheckSpec(AUDIT_CLEAN, asset=BACKUP_AUDIT)])
    def backup_audit(context: dg.AssetExecutionContext, config: AuditConfig, backup_store: BackupStore):
        """Audits a year (run config `days`) of backup partitions of every target against what their
        materialisations recorded: each day's object present with the recorded size and ETag, missing days named,
        the newest backup fresh. Costs only ListObjectsV2 requests (their count is recorded)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        end = now.date() - datetime.timedelta(days=1)
        start = max(settings.first_day, end - datetime.timedelta(days=max(config.days, 1) - 1))
        keys = [d.isoformat() for d in days(start, end)] if start <= end else []
        recorded = {t.name: recorded_partitions(context.instance, a, t.method, keys) for a, t in targets.items()}
        audit_targets = [AuditTarget(t.name, t.prefix, MARKER_OF_METHOD.get(t.method), t.retention_days)
                         for t in targets.values()]
        result = audit_store(backup_store, audit_targets, start, end, recorded, now, settings.freshness_hours)
        metadata: dict = {"window": f"{start} … {end}", "requests": int(sum(result.requests.values())),
                          "requests_by_operation": dg.MetadataValue.json(dict(result.requests))}
        rows = ["| target | ok | problems | missing days | unrecorded | expired | newest (h ago) |",
                "|---|---|---|---|---|---|---|"]
        for t in result.targets:
            counts = t.counts()
            metadata[f"{t.target}_problems"] = len(t.problems)
            metadata[f"{t.target}_missing_days"] = ", ".join(t.missing_days) or "none"
            rows.append(f"| {t.target} | {counts.get(OK, 0)} | {len(t.problems)} | {len(t.missing_days)} | "
                        f"{counts.get('unrecorded', 0)} | {counts.get('expired', 0)} | {t.age_hours} |")
        metadata["summary"] = dg.MetadataValue.md("\n".join(rows))
        problems = [f"{t.target} {f.partition}: {f.status} {f.detail}".strip()
                    for t in result.targets for f in t.problems]
        stale = [t.target for t in result.targets if not t.fresh]
        yield dg.MaterializeResult(metadata=metadata)
        yield dg.AssetCheckResult(check_name=AUDIT_CLEAN, passed=not problems and not stale, metadata={
            "problems": len(problems), "stale_targets": ", ".join(stale) or "none",
            "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:200]) or "none")})

    return backup_audit


# -- the slice of definitions ------------------------------------------------------------------------------------------
def backup_partitions(settings: BackupSettings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=settings.start_date, timezone="UTC")


def build_backup_assets(state: DesiredState) -> tuple[list, list, Optional[object], list]:
    """(assets, checks, schedule, jobs) of the backups: one asset per configured target (postgres_backup,
    minio_backup, config_backup) on one UTC DailyPartitionsDefinition, the restore drill, the window audit, their
    checks, `backup_job` (the day's backups and the drill, tagged prodg/kind=backup) with its schedule at
    prodg.yaml `backups.schedule` (03:00 UTC) for the previous day, and `backup_audit_job`. The schedule is the
    unresolved kind `build_schedule_from_partitioned_job` returns (Definitions resolves it). No targets: nothing."""
    settings = backup_settings(state)
    if not settings.targets:
        return [], [], None, []
    partitions = backup_partitions(settings)
    assets: list = []
    checks: list = []
    for asset_name, target in sorted(settings.targets.items()):
        if target.method == "pg_dumpall":
            assets.append(build_postgres_backup(state, settings, partitions, target))
        elif target.method == "s3_mirror":
            assets.append(build_minio_backup(state, settings, partitions, target))
        else:
            assets.append(build_config_backup(settings, partitions, target))
        checks.append(build_object_check(asset_name, target, partitions))
        checks += build_window_checks(asset_name, target, settings)
    backed_up = sorted(settings.targets)
    selection = list(backed_up)
    if POSTGRES_BACKUP in settings.targets:
        assets.append(build_restore_drill(state, partitions, settings.targets[POSTGRES_BACKUP]))
        selection.append(RESTORE_DRILL)
    assets.append(build_audit_asset(settings, backed_up))
    tags = {KIND_TAG: BACKUP_KIND}
    backup_job = dg.define_asset_job(BACKUP_JOB, selection=dg.AssetSelection.assets(*selection),
                                     partitions_def=partitions, tags=tags,
                                     description="The day's backups of every target, then the restore drill.")
    audit_job = dg.define_asset_job(AUDIT_JOB, selection=dg.AssetSelection.assets(BACKUP_AUDIT), tags=tags,
                                    description="The window audit of the backup store (listings only).")
    hour, minute = daily_at(settings.cron)
    schedule = dg.build_schedule_from_partitioned_job(
        backup_job, name=BACKUP_SCHEDULE, hour_of_day=hour, minute_of_hour=minute,
        default_status=dg.DefaultScheduleStatus.RUNNING, tags=tags,
        description="Backs up the previous UTC day's partition of every target (prodg.yaml backups.schedule).")
    return assets, checks, schedule, [backup_job, audit_job]
