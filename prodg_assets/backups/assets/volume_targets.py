"""The backup assets of what is neither a database dump nor MinIO nor the config tree: a service's data folder (the
`volume` method, one asset `<target>_backup` per service, downstream of it) and the host's secrets file
(`secrets_file`, `secrets_backup`). Each day is one encrypted object and the day's manifest, on the same daily
partitions, checks and retention as every target; how the folder is read is `volumes`' job."""


import hashlib
import os
from typing import Iterator

import dagster as dg

from ...contract import BACKUP_GROUP, TARGET_TAG, service_pool
from ...desired import DesiredState
from ...desired.interpolate import env_value
from ...engine.client import DockerEngine
from ...engine.facts import DataSource
from ...gitops.repo import ConfigRepo
from ...secret_source import SecretSource, parse_env_file
from ...settings import BackupSettings, BackupTarget
from ...streams import ProducerFailed
from ..capture.policy import Capture
from ..capture.volumes import TarHashes, archive_chunks, redis_snapshot, sqlite_folder_chunks
from ..store.client import BackupStore
from ..store.keys import archive_key
from ..store.stream import stream_backup
from .recipe import Produced, partition_manifest, run_partition, running_source, scrubber
from .targets import service_assets

CAPTURED_BY = {"redis_bgsave": "BGSAVE, then the finished RDB file", "sqlite": "SQLite's online backup API (helper)",
               "files": "the Engine's archive of the folder"}


def build_volume_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                        target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services[target.service]
    managed = service_assets(state)

    @dg.asset(name=target.asset, group_name=BACKUP_GROUP, partitions_def=partitions, deps=[dg.AssetKey(spec.asset)],
              pool=service_pool(spec.asset), kinds={"s3"}, tags={TARGET_TAG: target.name},
              description=f"The data of the {spec.name} service ({target.path}), captured by "
                          f"{CAPTURED_BY[target.capture]}, as one encrypted tar a day in the off-site store.")
    def volume_backup(context: dg.AssetExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                      secrets: SecretSource, backup_store: BackupStore) -> dg.MaterializeResult:
        values = secrets.values()
        day = context.partition_key
        failure = {"object_key": ""}

        def produce(cap: Capture, source: DataSource) -> Produced:
            key = failure["object_key"] = archive_key(target.prefix, day, cap.captured_at, target.name, ".tar",
                                                      settings.compression, settings.encrypted)
            chunks, captured, recorded = _capture(docker, repo, spec.container_name, target,
                                                  env_value(spec, "REDIS_PASSWORD", values),
                                                  settings.stall_timeout_s)
            hashes = TarHashes()
            try:
                result = stream_backup(backup_store, key, hashes.tap(chunks), settings.compression,
                                       {"partition": day, "source": spec.container_name, "commit": cap.commit},
                                       cap.recipients, cap.lock)
            finally:
                chunks.close()
            if hashes.error:
                backup_store.delete_objects([key])
                raise ProducerFailed(f"the captured tar of {captured} does not read back ({hashes.error})")
            manifest = partition_manifest(target, cap, source, source.description, result.compression,
                                          [result.entry()], capture=target.capture, captured=captured, archive="tar",
                                          files=hashes.files, **recorded)
            return Produced(manifest, [key], lambda up: dict(
                duration_s=round(result.duration_s, 3), throughput_mb_s=result.throughput_mb_s, captured=captured,
                capture=target.capture, files=len(hashes.files)),
                f"{key}: {result.raw_bytes} bytes of {captured}, {result.bytes} stored")

        return run_partition(context, target.name, settings, target, backup_store, repo, managed,
                             scrubber(backup_store, values), produce, failure=failure,
                             prepare=lambda: running_source(docker.client, spec, target.name, day))

    return volume_backup


def _capture(docker: DockerEngine, repo: ConfigRepo, container: str, target: BackupTarget,
             redis_password: str, stall_timeout_s: float) -> tuple[Iterator[bytes], str, dict]:
    """(the tar stream, what it holds, what the manifest records for the drill) of the target's capture method."""
    api = docker.client.api
    if target.capture == "redis_bgsave":
        rdb, keys = redis_snapshot(api, container, redis_password)
        return archive_chunks(api, container, rdb), f"{rdb} (after BGSAVE)", {"redis_keys": keys}
    if target.capture == "sqlite":
        if not docker.address.startswith("unix://"):
            raise ProducerFailed(f"capture sqlite needs an Engine on this machine (the helper's folder is shared "
                                 f"through the deploy root); the Engine is {docker.address}")
        return (sqlite_folder_chunks(api, container, target.path, shared_root=repo.deployed_dir,
                                     image=target.helper_image, idle_timeout_s=stall_timeout_s),
                f"{target.path} (SQLite databases by the online backup API)", {})
    return archive_chunks(api, container, f"{target.path}/."), target.path, {}


def build_secrets_backup(state: DesiredState, settings: BackupSettings, partitions: dg.PartitionsDefinition,
                         target: BackupTarget) -> dg.AssetsDefinition:
    managed = service_assets(state)

    @dg.asset(name=target.asset, group_name=BACKUP_GROUP, partitions_def=partitions, kinds={"s3"},
              pool="prodg_backup_secrets", tags={TARGET_TAG: target.name})
    def secrets_backup(context: dg.AssetExecutionContext, repo: ConfigRepo, secrets: SecretSource,
                       backup_store: BackupStore) -> dg.MaterializeResult:
        """The host's secrets file (prodg.yaml secrets.env_file), encrypted like every backup — without it the
        Infisical rows in the Postgres dumps cannot be decrypted (INFISICAL_ENCRYPTION_KEY) and no service starts.
        Its values never appear in logs or metadata: only its size and the stored object's sha256."""
        day = context.partition_key
        scrub = scrubber(backup_store, secrets.values())
        if secrets.source != "env_file":
            raise dg.Failure(description=f"secrets backup of {day}: the secrets live in {secrets.source}, not in a "
                                         f"file; back them up there (this target only reads secrets.env_file)")
        try:
            with open(secrets.env_file, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise dg.Failure(description=f"secrets backup of {day}: cannot read {secrets.env_file}: "
                                         f"{exc.strerror}") from None
        failure = {"object_key": ""}

        def produce(cap: Capture, _) -> Produced:
            key = failure["object_key"] = archive_key(target.prefix, day, cap.captured_at, "secrets", ".env",
                                                      settings.compression, settings.encrypted)
            result = stream_backup(backup_store, key, iter([data]), settings.compression,
                                   {"partition": day, "commit": cap.commit}, cap.recipients, cap.lock)
            # for the drill: the names it holds (not their values) and the sha256 of the whole file
            manifest = partition_manifest(target, cap, None, secrets.env_file, result.compression,
                                          [result.entry()], mode=oct(os.stat(secrets.env_file).st_mode & 0o777),
                                          names=sorted(parse_env_file(data.decode("utf-8", "replace"))),
                                          plain_sha256=hashlib.sha256(data).hexdigest())
            return Produced(manifest, [key], lambda up: dict(duration_s=round(result.duration_s, 3)))

        return run_partition(context, "secrets", settings, target, backup_store, repo, managed, scrub, produce,
                             failure=failure)

    return secrets_backup
