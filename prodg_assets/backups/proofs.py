"""The assets that prove the backups: the nightly restore drill (`postgres_restore_drill`: the day's dump restored
into a scratch Postgres and compared with its census) and the window audit (`backup_audit`, a year of partitions
against what their materialisations recorded, listings only)."""

import datetime
import os
import secrets as pysecrets

import dagster as dg

from ..contract import (
    AUDIT_CLEAN,
    BACKUP_AUDIT,
    BACKUP_GROUP,
    POSTGRES_BACKUP,
    RESTORE_DRILL,
    TARGET_TAG,
)
from ..desired import DesiredState
from ..desired.interpolate import env_value
from ..engine.client import DockerEngine
from ..engine.exec import ProducerFailed
from ..engine.facts import container_source
from ..engine.secrets import SecretSource
from ..settings import BackupSettings, BackupTarget
from .assets import scrubber
from .audit import OK, AuditTarget, audit_store, days
from .drills import DEFAULT_SCRATCH_IMAGE, remove_stale_scratch, restore_drill
from .postgres import Census, RestoreFailed
from .records import recorded_metadata, recorded_partitions, recorded_value
from .retention import MARKER_OF_METHOD
from .store import BackupStore, StoreError

STALE_SCRATCH_AGE = datetime.timedelta(hours=6)


class RestoreDrillConfig(dg.Config):
    image: str = ""  # scratch image; default: the live postgres container's image (same major version)
    row_count_tolerance: float = 0.0  # relative difference accepted per table (dumps of a busy database)


def build_restore_drill(state: DesiredState, partitions: dg.PartitionsDefinition,
                        target: BackupTarget) -> dg.AssetsDefinition:
    spec = state.services[target.service]

    @dg.asset(name=RESTORE_DRILL, group_name=BACKUP_GROUP, partitions_def=partitions,
              deps=[dg.AssetKey(POSTGRES_BACKUP)], kinds={"postgres"}, tags={TARGET_TAG: target.name})
    def postgres_restore_drill(context: dg.AssetExecutionContext, config: RestoreDrillConfig, docker: DockerEngine,
                               secrets: SecretSource, backup_store: BackupStore) -> dg.MaterializeResult:
        """Proves the day's Postgres backup restores: downloads it, verifies its sha256, restores it into a scratch
        Postgres container (no network, removed afterwards) and compares databases and row counts with the census
        taken at dump time. Fails with the differences."""
        day = context.partition_key
        metadata = recorded_metadata(context.instance, POSTGRES_BACKUP, day)
        if metadata is None:
            raise dg.Failure(description=f"restore drill of {day}: no postgres_backup materialisation recorded")
        key, sha256 = str(recorded_value(metadata, "object_key")), str(recorded_value(metadata, "sha256"))
        expected = Census.from_json(recorded_value(metadata, "row_counts", {}) or {})
        _, live_image, _ = container_source(docker.client, spec.container_name)
        image = config.image or live_image or DEFAULT_SCRATCH_IMAGE
        db_user = env_value(spec, "POSTGRES_USER", {}) or "postgres"
        for stale in remove_stale_scratch(docker.client, STALE_SCRATCH_AGE):
            context.log.warning(f"removed {stale}, a scratch Postgres left behind by an interrupted drill")
        name = f"prodg-restore-drill-{day}-{os.getpid()}-{pysecrets.token_hex(3)}"
        scrub = scrubber(backup_store, secrets.values())
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


class AuditConfig(dg.Config):
    days: int = 365  # how many days back from yesterday to audit


def build_audit_asset(settings: BackupSettings, targets: dict[str, BackupTarget]) -> dg.AssetsDefinition:
    asset_names = sorted(targets)

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
