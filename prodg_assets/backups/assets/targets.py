"""The store targets' assets: `postgres_backup` (pg_dumpall), `dagster_backup` (Dagster's own database),
`minio_backup` (the object mirror) and `config_backup` (the config tree as deployed), each a daily partition made by
recipe.run_partition with its own `produce`."""

import time

import dagster as dg

from ...contract import (
    BACKUP_GROUP,
    CONFIG_BACKUP,
    DAGSTER_BACKUP,
    MINIO_BACKUP,
    POSTGRES_BACKUP,
    TARGET_TAG,
    service_pool,
)
from ...desired import DesiredState
from ...desired.interpolate import env_value
from ...engine.client import DockerEngine
from ...engine.facts import DataSource, container_source
from ...gitops.repo import ConfigRepo, git_archive_chunks
from ...secret_source import SecretSource
from ...settings import BackupSettings, BackupTarget
from ..capture.dagster import dagster_database
from ..capture.mirror import COMPRESSION as MIRROR_COMPRESSION
from ..capture.mirror import mirror_s3, stored_content
from ..capture.policy import Capture
from ..capture.postgres import census, pg_dumpall_chunks
from ..store.client import BackupStore, S3Source, minio_endpoint
from ..store.keys import config_key, manifest_key, postgres_key
from ..store.objects import UploadResult
from ..store.stream import stream_backup
from .recipe import Produced, partition_manifest, run_partition, running_source, scrubber


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
                                     idle_timeout_s=settings.stall_timeout_s,
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


def build_dagster_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                         target: BackupTarget) -> dg.AssetsDefinition:
    prefix = target.prefix
    managed = service_assets(state)

    @dg.asset(name=DAGSTER_BACKUP, group_name=BACKUP_GROUP, partitions_def=partitions, kinds={"postgres", "s3"},
              pool="prodg_backup_dagster", tags={TARGET_TAG: target.name})
    def dagster_backup(context: dg.AssetExecutionContext, config: PostgresBackupConfig, docker: DockerEngine,
                       repo: ConfigRepo, secrets: SecretSource, backup_store: BackupStore) -> dg.MaterializeResult:
        """Dagster's own database — every deploy's and backup's run, event and materialisation, the history the UI
        shows — as `pg_dumpall` of the Postgres this instance's storage connects to (docker/prod's
        dagster-postgres, found on the Engine by the connection's host), in a helper container from its image,
        zstd-compressed, encrypted and streamed into the off-site store (`dagster/<day>/pg_dumpall-<HHMMSS>…`), then
        the day's manifest with its row counts (runs and events among them) for the drill. The dump is taken after
        the count while this run itself keeps writing events: the drill expects at least as many."""
        values = secrets.values()
        day = context.partition_key
        failure = {"object_key": ""}

        known = dict(values)  # the database's password joins what is scrubbed from any message

        def prepare():
            db = dagster_database(context.instance, docker.client)
            known["DAGSTER_POSTGRES_PASSWORD"] = db.password
            return db, container_source(docker.client, db.container)

        def produce(cap: Capture, prepared) -> Produced:
            db, source = prepared
            key = failure["object_key"] = postgres_key(prefix, day, cap.captured_at, settings.compression,
                                                       settings.encrypted)
            counts = census(docker.client.api, db.container, db.db_user, lock_timeout_s=config.census_lock_timeout_s)
            helper_root = repo.deployed_dir if config.dump_in_helper and docker.address.startswith("unix://") else ""
            dump = pg_dumpall_chunks(docker.client.api, db.container, password=db.password, db_user=db.db_user,
                                     lock_wait_timeout_s=config.lock_wait_timeout_s, helper_root=helper_root,
                                     idle_timeout_s=settings.stall_timeout_s, port=db.port)
            try:
                result = stream_backup(backup_store, key, dump, settings.compression,
                                       {"partition": day, "source": db.container, "commit": cap.commit},
                                       cap.recipients, cap.lock)
            finally:
                dump.close()
            history = db.history(counts.rows)
            manifest = partition_manifest(target, cap, source, source.description, result.compression,
                                          [result.entry()], row_counts=counts.as_json(), db_user=db.db_user,
                                          database=db.database, history=history)
            return Produced(manifest, [key], lambda up: dict(
                duration_s=round(result.duration_s, 3), throughput_mb_s=result.throughput_mb_s,
                database=f"{db.database} in {db.container}", runs=history["runs"], events=history["events"],
                tables=len(counts.rows), rows=sum(counts.rows.values())),
                f"{key}: {history['runs']} runs, {history['events']} events, {result.raw_bytes} bytes dumped")

        scrub = scrubber(backup_store, known)  # reads `known` at each call: the password once prepare() found it
        return run_partition(context, "dagster", settings, target, backup_store, repo, managed, scrub, produce,
                             failure=failure, prepare=prepare)

    return dagster_backup


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
