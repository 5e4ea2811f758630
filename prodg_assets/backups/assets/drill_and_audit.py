"""The assets that prove the backups: the nightly restore drill (`postgres_restore_drill`: the day's dump restored
into a scratch Postgres and compared with its census) and the window audit (`backup_audit`, a year of partitions'
manifests against the store's listing and what their materialisations recorded)."""

import datetime
import os
import secrets as pysecrets

import dagster as dg

from ...contract import AUDIT_CLEAN, BACKUP_AUDIT, BACKUP_GROUP, POSTGRES_BACKUP, RESTORE_DRILL, TARGET_TAG
from ...desired import DesiredState
from ...desired.interpolate import env_value
from ...engine.client import DockerEngine
from ...engine.facts import container_source
from ...secret_source import SecretSource
from ...settings import BackupSettings, BackupTarget
from ...streams import ProducerFailed
from ..capture.postgres import Census
from ..format.crypt import AgeError, BackupIdentity
from ..proofs.audit import LATE, OK, AuditTarget, audit_store, days
from ..proofs.drills import DEFAULT_SCRATCH_IMAGE, remove_stale_scratch, restore_drill
from ..store.client import BackupStore
from ..store.download import RestoreFailed
from ..store.manifest import ManifestError, read_manifest
from ..store.objects import StoreError
from .recipe import scrubber
from .records import recorded_partitions

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
                               secrets: SecretSource, backup_store: BackupStore,
                               backup_identity: BackupIdentity) -> dg.MaterializeResult:
        """Proves the day's Postgres backup restores: reads the day's manifest, downloads the dump, verifies its
        sha256, decrypts it with the host's identity (PRODG_BACKUP_IDENTITY), restores it into a scratch Postgres
        container (no network, removed afterwards) and compares databases and row counts with the census taken at
        dump time. Fails with the differences."""
        day = context.partition_key
        scrub = scrubber(backup_store, secrets.values())
        try:
            manifest = read_manifest(backup_store, target.prefix, day)
        except (StoreError, ManifestError) as exc:
            raise dg.Failure(description=f"restore drill of {day}: {scrub(str(exc))}") from None
        if manifest is None:
            raise dg.Failure(description=f"restore drill of {day}: no manifest under {target.prefix}{day}/ (the "
                                         f"day was never backed up, or its backup never finished)")
        key, sha256 = manifest.objects[0].object_key, manifest.objects[0].sha256
        expected = Census.from_json(manifest.extra.get("row_counts") or {})
        image = config.image or container_source(docker.client, spec.container_name).image_id \
            or DEFAULT_SCRATCH_IMAGE
        db_user = env_value(spec, "POSTGRES_USER", {}) or "postgres"
        for stale in remove_stale_scratch(docker.client, STALE_SCRATCH_AGE):
            context.log.warning(f"removed {stale}, a scratch Postgres left behind by an interrupted drill")
        name = f"prodg-restore-drill-{day}-{os.getpid()}-{pysecrets.token_hex(3)}"
        try:
            identities = backup_identity.identities() if manifest.encrypted else []
            drill = restore_drill(backup_store, manifest, identities, expected, docker.client, image, name, db_user,
                                  config.row_count_tolerance)
        except (RestoreFailed, StoreError, ProducerFailed, AgeError) as exc:
            raise dg.Failure(description=f"restore drill of {day} ({key}) failed: {scrub(str(exc))}") from None
        findings = "\n".join(f"- {f}" for f in drill.findings) or "none"
        if not drill.passed:
            raise dg.Failure(description=f"restore drill of {day}: {len(drill.findings)} differences from the "
                                         f"census at dump time", metadata={"findings": dg.MetadataValue.md(findings),
                                                                           "object_key": key})
        return dg.MaterializeResult(metadata={
            "object_key": key, "sha256": sha256, "captured_at": manifest.captured_at, "commit": manifest.commit,
            "decrypted_with": ", ".join(i.recipient.fingerprint for i in identities) or "not encrypted",
            "scratch_image": image, "scratch_container": name, "databases": ", ".join(drill.actual.databases),
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
        """Audits a year (run config `days`) of backup partitions of every target: each day's manifest present
        and the one its materialisation recorded, every object it names in the store with the size and ETag it was
        uploaded with, missing, incomplete and late-captured days named, the newest backup fresh by its
        captured_at. Costs one listing per target and one GET per manifest (the counts are recorded)."""
        now = datetime.datetime.now(datetime.timezone.utc)
        end = now.date() - datetime.timedelta(days=1)
        start = max(settings.first_day, end - datetime.timedelta(days=max(config.days, 1) - 1))
        keys = [d.isoformat() for d in days(start, end)] if start <= end else []
        recorded = {t.name: recorded_partitions(context.instance, a, keys) for a, t in targets.items()}
        audit_targets = [AuditTarget(t.name, t.prefix, t.retention_days) for t in targets.values()]
        result = audit_store(backup_store, audit_targets, start, end, recorded, now, settings.freshness_hours)
        metadata: dict = {"window": f"{start} … {end}", "requests": int(sum(result.requests.values())),
                          "requests_by_operation": dg.MetadataValue.json(dict(result.requests))}
        rows = ["| target | ok | problems | missing days | captured late | unrecorded | expired | newest captured "
                "(h ago) |", "|---|---|---|---|---|---|---|---|"]
        for t in result.targets:
            counts = t.counts()
            metadata[f"{t.target}_problems"] = len(t.problems)
            metadata[f"{t.target}_missing_days"] = ", ".join(t.missing_days) or "none"
            metadata[f"{t.target}_captured_late"] = ", ".join(
                f"{f.partition} (captured {f.captured_at})" for f in t.findings if f.status == LATE) or "none"
            rows.append(f"| {t.target} | {counts.get(OK, 0)} | {len(t.problems)} | {len(t.missing_days)} | "
                        f"{counts.get(LATE, 0)} | {counts.get('unrecorded', 0)} | {counts.get('expired', 0)} | "
                        f"{t.age_hours} |")
        metadata["summary"] = dg.MetadataValue.md("\n".join(rows))
        problems = [f"{t.target} {f.partition}: {f.status} {f.detail}".strip()
                    for t in result.targets for f in t.problems]
        stale = [t.target for t in result.targets if not t.fresh]
        yield dg.MaterializeResult(metadata=metadata)
        yield dg.AssetCheckResult(check_name=AUDIT_CLEAN, passed=not problems and not stale, metadata={
            "problems": len(problems), "stale_targets": ", ".join(stale) or "none",
            "details": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems[:200]) or "none")})

    return backup_audit
