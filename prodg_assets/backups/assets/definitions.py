"""The backups' slice of definitions: one UTC DailyPartitionsDefinition shared by every target's asset, the restore
drill, the window audit, their checks, `backup_job` with its 03:00 UTC schedule, `backup_audit_job`, and the two S3
resources (the off-site store and MinIO's API)."""

from __future__ import annotations

import os
from typing import Mapping

import dagster as dg

from ...contract import (
    AUDIT_JOB,
    BACKUP_AUDIT,
    BACKUP_JOB,
    BACKUP_KIND,
    BACKUP_SCHEDULE,
    KIND_TAG,
    POSTGRES_BACKUP,
    RESTORE_DRILL,
    RESTORED,
)
from ...desired import DesiredState
from ...desired.interpolate import secret_reference
from ...desired.loader import daily_at
from ...secret_source import secret_source_config
from ...settings import BackupSettings, BackupTarget, EnvSettings, store_settings
from ..store.client import BackupStore, S3Source
from .checks import build_object_check, build_window_checks
from .drill_and_audit import build_audit_asset, build_restore_drill
from .rotation import build_drill_rotation, build_restored_check
from .targets import build_config_backup, build_dagster_backup, build_minio_backup, build_postgres_backup
from .volume_targets import build_secrets_backup, build_volume_backup


def targets_by_asset(settings: BackupSettings) -> dict[str, BackupTarget]:
    return {t.asset: t for t in settings.targets}


def backup_partitions(settings: BackupSettings) -> dg.DailyPartitionsDefinition:
    return dg.DailyPartitionsDefinition(start_date=settings.first_day.isoformat(), timezone="UTC")


def build_backup_resources(state: DesiredState, environ: Mapping[str, str] | None = None) -> dict:
    """`backup_store` (the off-site bucket; keys by the names prodg.yaml gives, from the environment or the secrets
    source; timeouts, attempts and part size from STORE_SETTINGS; manifests signed with the host's identity,
    PRODG_BACKUP_IDENTITY, and believed when it or `backups.signers` signed them) and `minio_source` (MinIO's S3 API
    where the minio service publishes port 9000, with its root credentials; the assets ask the Engine where it
    answers)."""
    b = state.settings.backups
    resources: dict = {
        "backup_store": BackupStore(endpoint_url=b.endpoint_url, region=b.region, bucket=b.bucket,
                                    access_key_id_env=b.access_key_id_env,
                                    secret_access_key_env=b.secret_access_key_env,
                                    key_source=secret_source_config(state.settings.secrets),
                                    signers=dict(b.signers), identity_file=EnvSettings.from_env(
                                        os.environ if environ is None else environ).backup_identity,
                                    **store_settings(environ)),
    }
    target = next((t for t in b.targets if t.method == "s3_mirror"), None)
    spec = state.services.get(target.service) if target and target.service else None
    port = next((p for p in spec.ports if p.container_port == 9000), None) if spec else None
    host = "127.0.0.1" if not port or port.host_ip in ("0.0.0.0", "127.0.0.1", "::") else port.host_ip
    user, user_secret = secret_reference(spec, "MINIO_ROOT_USER")
    _, password_secret = secret_reference(spec, "MINIO_ROOT_PASSWORD")
    resources["minio_source"] = S3Source(endpoint_url=f"http://{host}:{port.host_port if port else 9000}",
                                         access_key_id=user, access_key_id_secret=user_secret,
                                         secret_access_key_secret=password_secret or "MINIO_ROOT_PASSWORD")
    return resources


# prodg.yaml `backups.targets.<name>.method` → the builder of that target's asset (the schema lists the same names)
CAPTURE_METHODS = {
    "pg_dumpall": build_postgres_backup,
    "dagster_storage": build_dagster_backup,
    "s3_mirror": build_minio_backup,
    "config_archive": build_config_backup,
    "volume": build_volume_backup,
    "secrets_file": build_secrets_backup,
}


def capture_builder(target: BackupTarget):
    """The asset builder of `target`'s capture method; an unknown method is an error naming the target, never
    another method's asset (the loader refuses it first: this holds for a target built any other way)."""
    try:
        return CAPTURE_METHODS[target.method]
    except KeyError:
        raise ValueError(f"backup target {target.name!r}: unknown capture method {target.method!r} (known: "
                         f"{', '.join(sorted(CAPTURE_METHODS))})") from None


def backup_definitions(state: DesiredState) -> dg.Definitions:
    """One asset per configured target (postgres_backup, minio_backup, config_backup, `<name>_backup` of each
    service volume, secrets_backup) on one UTC
    DailyPartitionsDefinition, the restore drill, the window audit, their checks, `backup_job` (the day's backups
    and the drill, tagged prodg/kind=backup) with its schedule at prodg.yaml `backups.schedule` (03:00 UTC) for the
    previous day, and `backup_audit_job`. No targets: an empty slice. (The resources are the root's.)"""
    settings = state.settings.backups
    targets = targets_by_asset(settings)
    if not targets:
        return dg.Definitions()
    partitions = backup_partitions(settings)
    assets: list = []
    checks: list = []
    for asset_name, target in sorted(targets.items()):
        assets.append(capture_builder(target)(state, settings, partitions, target))
        checks.append(build_object_check(asset_name, target, partitions))
        checks.append(build_restored_check(state, asset_name, target, partitions))
        checks += build_window_checks(asset_name, target, settings)
    selection = sorted(targets)
    if POSTGRES_BACKUP in targets:
        assets.append(build_restore_drill(state, partitions, targets[POSTGRES_BACKUP]))
        selection.append(RESTORE_DRILL)
    assets.append(build_audit_asset(settings, targets))
    tags = {KIND_TAG: BACKUP_KIND}
    # the `restored` checks are the rotating drill's (one target and day a night), not every backup's
    restores = dg.AssetSelection.checks(*(dg.AssetCheckKey(dg.AssetKey(a), RESTORED) for a in targets))
    backup_job = dg.define_asset_job(BACKUP_JOB, selection=dg.AssetSelection.assets(*selection) - restores,
                                     partitions_def=partitions, tags=tags,
                                     description="The day's backups of every target, then the restore drill.")
    audit_job = dg.define_asset_job(AUDIT_JOB, selection=dg.AssetSelection.assets(BACKUP_AUDIT), tags=tags,
                                    description="The window audit of the backup store (listings only).")
    hour, minute = daily_at(settings.schedule) or (3, 0)  # the loader rejects any other schedule
    schedule = dg.build_schedule_from_partitioned_job(
        backup_job, name=BACKUP_SCHEDULE, hour_of_day=hour, minute_of_hour=minute,
        default_status=dg.DefaultScheduleStatus.RUNNING, tags=tags,
        description="Backs up the previous UTC day's partition of every target (prodg.yaml backups.schedule).")
    drill_job, drill_schedule = build_drill_rotation(settings, targets)
    return dg.Definitions(assets=assets, asset_checks=checks, schedules=[schedule, drill_schedule],
                          jobs=[backup_job, audit_job, drill_job])
