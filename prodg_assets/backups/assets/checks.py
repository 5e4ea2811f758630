"""The backups' asset checks: each day's backup intact as its manifest says (`object_intact`, per partition), no
missing day in the retention window (`no_missing_days`) and the newest backup fresh by its captured_at (`fresh`) —
the last two from a listing and the newest manifest."""

import datetime
import warnings

import dagster as dg

from ...contract import FRESH, NO_MISSING_DAYS, OBJECT_INTACT
from ...settings import BackupSettings, BackupTarget
from ..proofs.audit import NOT_PROBLEMS, audit_target, check_partition
from ..store.client import BackupStore
from .records import recorded_metadata, to_recorded


def build_object_check(asset: str, target: BackupTarget, partitions: dg.PartitionsDefinition) \
        -> dg.AssetChecksDefinition:
    def object_intact(context: dg.AssetCheckExecutionContext, backup_store: BackupStore) -> dg.AssetCheckResult:
        """This partition's backup is in the store as recorded: its manifest is the one the materialisation
        recorded (sha256), and every object the manifest names is there with the size and ETag it was uploaded
        with."""
        day = context.partition_key
        metadata = recorded_metadata(context.instance, asset, day)
        if metadata is None:
            return dg.AssetCheckResult(passed=False, metadata={"partition": day,
                                                               "detail": "no materialisation recorded"})
        rec = to_recorded(day, metadata)
        finding = check_partition(backup_store, target.prefix, day, rec)
        return dg.AssetCheckResult(passed=finding.status in NOT_PROBLEMS, metadata={
            "partition": day, "manifest_key": rec.manifest_key, "status": finding.status, "detail": finding.detail,
            "captured_at": finding.captured_at or "unknown", "commit": finding.commit or "unknown"})

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

    def listing_audit(store: BackupStore):
        now = datetime.datetime.now(datetime.timezone.utc)
        start, end = _window(settings, target, now.date())
        return audit_target(store, target.name, target.prefix, start, end, now, settings.freshness_hours,
                            verify=False), start, end

    @dg.asset_check(asset=asset, name=NO_MISSING_DAYS, blocking=False)
    def no_missing_days(backup_store: BackupStore) -> dg.AssetCheckResult:
        """Every day of the retention window (up to yesterday) has a complete backup (its manifest) in the store;
        missing and incomplete days are named. Uses a listing of the target's prefix and the newest manifest."""
        audit, start, end = listing_audit(backup_store)
        missing = audit.missing_days
        return dg.AssetCheckResult(passed=not missing, metadata={
            "window": f"{start} … {end}" if start <= end else "empty (no day due yet)",
            "missing_days": ", ".join(missing) or "none", "missing_count": len(missing),
            "days_checked": len(audit.findings)})

    @dg.asset_check(asset=asset, name=FRESH, blocking=False)
    def fresh(backup_store: BackupStore) -> dg.AssetCheckResult:
        """The newest complete backup of this target was captured less than prodg.yaml `backups.freshness_hours`
        ago (its manifest's captured_at, not the store's upload time)."""
        audit, _, _ = listing_audit(backup_store)
        return dg.AssetCheckResult(passed=audit.fresh, metadata={
            "newest_captured_at": audit.newest_captured_at.isoformat() if audit.newest_captured_at else "none",
            "age_hours": float(audit.age_hours) if audit.age_hours is not None else -1.0,
            "limit_hours": float(settings.freshness_hours)})

    return [no_missing_days, fresh]
