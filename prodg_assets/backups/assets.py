"""The backup assets: one daily partition per day and target, each a verified object in the off-site store —
`postgres_backup` (pg_dumpall), `minio_backup` (the object mirror) and `config_backup` (the deployed config tree).
The work is in postgres/stream/mirror/retention; this module turns it into materialisations and metadata."""

import datetime
from typing import Callable, Mapping

import dagster as dg

from ..contract import (
    BACKUP_GROUP,
    CONFIG_BACKUP,
    MINIO_BACKUP,
    POSTGRES_BACKUP,
    TARGET_TAG,
    service_pool,
)
from ..desired import DesiredState
from ..desired.interpolate import env_value
from ..engine.client import DockerEngine
from ..engine.exec import ProducerFailed
from ..engine.facts import container_source
from ..engine.secrets import SecretSource, redact
from ..gitops.repo import ConfigRepo, git_archive_chunks
from ..gitops.run import run_commit
from ..settings import BackupSettings, BackupTarget
from .keys import config_key, postgres_key
from .mirror import mirror_s3
from .postgres import census, pg_dumpall_chunks
from .retention import prune
from .store import BackupStore, S3Source, StoreError
from .stream import stream_backup

STALE_UPLOAD_AGE = datetime.timedelta(hours=6)


def _today() -> datetime.date:
    return datetime.datetime.now(datetime.timezone.utc).date()


def backup_metadata(commit: str, source: str, key: str, raw_bytes: int, stored: int, sha256: str, etag: str,
                    duration_s: float, throughput: float, pruned: int, **extra) -> dict:
    return {"commit": commit, "source": source, "object_key": key, "raw_bytes": int(raw_bytes),
            "bytes": int(stored), "sha256": sha256, "etag": etag, "duration_s": round(float(duration_s), 3),
            "throughput_mb_s": float(throughput), "pruned_objects": int(pruned), **extra}


def scrubber(store: BackupStore, values: Mapping[str, str]) -> Callable[[str], str]:
    return lambda text: store.scrub(redact(text, values))


def described(exc: BaseException) -> str:
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


class PostgresBackupConfig(dg.Config):
    lock_wait_timeout_s: int = 300  # a table locked longer than this fails the dump instead of stalling it
    census_lock_timeout_s: int = 30  # a database whose tables stay locked longer is recorded as uncounted


def build_postgres_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                          target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services[target.service]
    prefix = target.prefix

    @dg.asset(name=POSTGRES_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions,
              deps=[dg.AssetKey(spec.asset)], pool=service_pool(spec.asset), kinds={"postgres", "s3"},
              tags={TARGET_TAG: target.name})
    def postgres_backup(context: dg.AssetExecutionContext, config: PostgresBackupConfig, docker: DockerEngine,
                        repo: ConfigRepo, secrets: SecretSource, backup_store: BackupStore) -> dg.MaterializeResult:
        """The whole Postgres cluster of the day: `pg_dumpall` run inside the postgres container, zstd-compressed
        and streamed into the off-site store as one object (`postgres/<day>/pg_dumpall-<HHMMSS>.sql.zst`), its
        sha256 computed on the way. A dump that fails leaves no object. Row counts of every table are recorded
        first, for the restore drill. Never runs while the postgres service is being deployed (same pool)."""
        values = secrets.values()
        scrub = scrubber(backup_store, values)
        day, now = context.partition_key, datetime.datetime.now(datetime.timezone.utc)
        commit = run_commit(context, repo)
        container = spec.container_name
        source, image_id, running = container_source(docker.client, container)
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
                                         f"{scrub(described(exc))}",
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
              pool=service_pool(spec.asset) if spec else "prodg_backup_minio",
              kinds={"s3"}, tags={TARGET_TAG: target.name})
    def minio_backup(context: dg.AssetExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                     secrets: SecretSource, backup_store: BackupStore, minio_source: S3Source) \
            -> dg.MaterializeResult:
        """Every bucket and object of MinIO, copied object by object to `minio/<day>/<bucket>/<key>` in the
        off-site store, then `minio/<day>/manifest.json` (bucket, key, size, sha256 of each object) written last;
        the manifest's sha256 is the partition's checksum. A failed copy leaves no manifest and removes what it
        copied."""
        values = secrets.values()
        source_api = minio_source.with_secrets(values)
        store_scrub = scrubber(backup_store, values)

        def scrub(text: str) -> str:
            return source_api.scrub(store_scrub(text))

        day = context.partition_key
        commit = run_commit(context, repo)
        source, image_id, _ = container_source(docker.client, container_name) if container_name else ("", "", False)
        source = f"{source}, S3 API {minio_source.endpoint_url}" if image_id else f"S3 API {minio_source.endpoint_url}"
        try:
            aborted = clean_partition(backup_store, prefix, day, context.log)
            result = mirror_s3(source_api, backup_store, prefix, day)
        except (ProducerFailed, StoreError) as exc:
            raise dg.Failure(description=f"minio backup of {day} failed; no manifest was written: "
                                         f"{scrub(described(exc))}", metadata={"commit": commit, "source": source}) \
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
              pool="prodg_backup_configs", tags={TARGET_TAG: target.name})
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
                                         f"{backup_store.scrub(described(exc))}") from None
        pruned = prune(backup_store, target, _today(), {key}, context.log)
        return dg.MaterializeResult(metadata=backup_metadata(
            commit, source, key, result.raw_bytes, result.bytes, result.sha256, result.etag, result.duration_s,
            result.throughput_mb_s, pruned, compression=result.compression, aborted_uploads=aborted))

    return config_backup
