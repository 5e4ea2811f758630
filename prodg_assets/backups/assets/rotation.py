"""The rotating restore drill: `restored`, a check on each day (partition) of every backup target, that really
restores that day into scratch containers and folders and verifies its content; and `restore_drill_rotation`, the
nightly schedule that picks one target and one day of its retention window, so that over time every target and
every day within the window is proven. The UI shows, per target and day, "restored and verified on …"."""

import contextlib
import datetime
import fcntl
import os
import shutil
import tempfile
import warnings
from typing import Iterator, Optional, Sequence

import dagster as dg

from ...contract import DRILL_JOB, DRILL_KIND, DRILL_SCHEDULE, KIND_TAG, RESTORED
from ...desired import DesiredState
from ...engine.client import DockerEngine
from ...engine.locks import LOCK_FOLDER
from ...gitops.repo import ConfigRepo
from ...secret_source import SecretSource
from ...settings import BackupSettings, BackupTarget
from ...streams import ProducerFailed
from ..format.crypt import AgeError, BackupIdentity
from ..proofs.audit import days
from ..proofs.verify import VERIFY, Verified
from ..store.client import BackupStore
from ..store.download import RestoreFailed
from ..store.manifest import Manifest, ManifestError, read_manifest
from ..store.objects import StoreError
from .recipe import scrubber

DRILL_FOLDER = ".drills"  # under the deploy root (the Engine sees it at the same path): scratch folders of drills
DRILL_LOCK = "drills.lock"  # in the deploy root's lock folder: held shared by each running drill
DRILL_HOUR = 5  # UTC: after the 03:00 backups and their own drill


def drill_for_night(targets: Sequence[BackupTarget], first_day: datetime.date, night: datetime.date) \
        -> Optional[tuple[BackupTarget, datetime.date]]:
    """The target and the day the drill of `night` restores: the targets in turn (by name), and for each target
    the next day of its retention window (up to the night before) on each of its turns. None before the first
    backup exists."""
    ordered = sorted(targets, key=lambda t: t.name)
    n = (night - first_day).days
    if n < 1 or not ordered:
        return None
    target = ordered[n % len(ordered)]
    window = days(max(first_day, night - datetime.timedelta(days=target.retention_days)),
                  night - datetime.timedelta(days=1))
    if not window:
        return None
    return target, window[(n // len(ordered)) % len(window)]


def build_restored_check(state: DesiredState, asset: str, target: BackupTarget,
                         partitions: dg.PartitionsDefinition) -> dg.AssetChecksDefinition:
    def restored(context: dg.AssetCheckExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                 secrets: SecretSource, backup_store: BackupStore,
                 backup_identity: BackupIdentity) -> dg.AssetCheckResult:
        """This day's backup restored into scratch containers and folders (no network, removed afterwards) with the
        host's identity, and its content verified: row counts for Postgres, each object for MinIO, each file's
        sha256 for a service's data and the config tree (the tree also against its commit), the names and hash of
        the secrets file; a SQLite database's integrity and a scratch container of the service's image healthy on
        the restored data; Redis loading it. Run by the nightly rotation (restore_drill_rotation) or by hand."""
        day = context.partition_key
        scrub = scrubber(backup_store, secrets.values())
        try:
            manifest = read_manifest(backup_store, target.prefix, day)
        except (StoreError, ManifestError) as exc:
            return _result(day, False, f"the manifest cannot be read: {scrub(str(exc))}")
        if manifest is None:
            return _result(day, False, f"no manifest under {target.prefix}{day}/: nothing to restore")
        found = Verified()
        try:
            identities = backup_identity.identities() if manifest.encrypted else []
            with drill_scratch(repo, day) as scratch:
                VERIFY[target.method](found, state, target, manifest, identities, docker, repo, backup_store,
                                      scratch)
        except (RestoreFailed, StoreError, ProducerFailed, AgeError, OSError) as exc:
            found.add("restore", False, scrub(str(exc)))
        return _result(day, found.passed, found.markdown(), manifest)

    with warnings.catch_warnings():  # partitioned asset checks are a preview feature of Dagster 1.13
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(asset=asset, name=RESTORED, partitions_def=partitions, blocking=False)(restored)


def _result(day: str, passed: bool, detail: str, manifest: Optional[Manifest] = None) -> dg.AssetCheckResult:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    metadata = {"partition": day, "restored_at": now, "verified": dg.MetadataValue.md(detail or "nothing")}
    if manifest is not None:
        metadata.update(captured_at=manifest.captured_at, commit=manifest.commit or "unknown",
                        object_key=manifest.objects[0].object_key if manifest.objects else "none")
    return dg.AssetCheckResult(passed=passed, metadata=metadata,
                               description=f"{'restored and verified' if passed else 'restore FAILED'} on {now}")


@contextlib.contextmanager
def drill_scratch(repo: ConfigRepo, day: str) -> Iterator[str]:
    """A drill's scratch folder in .drills/ (both 0700), removed when the drill ends. It holds decrypted data (the
    secrets file too), so what a killed drill left there is removed by the next drill that finds no other running:
    each running drill holds .locks/drills.lock shared, and one that gets it exclusive first empties .drills/ (a
    flock: the kernel drops it with its process, and every run container sharing the deploy root sees it)."""
    parent = os.path.join(repo.deployed_dir, DRILL_FOLDER)
    os.makedirs(parent, mode=0o700, exist_ok=True)
    os.chmod(parent, 0o700)
    locks = os.path.join(repo.deployed_dir, LOCK_FOLDER)
    os.makedirs(locks, exist_ok=True)
    lock = os.open(os.path.join(locks, DRILL_LOCK), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _remove_stale_drills(parent)
        except BlockingIOError:  # another drill is running: its folder is not stale; the next quiet drill cleans
            pass
        fcntl.flock(lock, fcntl.LOCK_SH)  # held until this drill's folder is gone
        scratch = tempfile.mkdtemp(prefix=f"{day}-", dir=parent)
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    finally:
        os.close(lock)


def _remove_stale_drills(parent: str) -> None:
    """Everything in .drills/: left by drills that were killed (none is running)."""
    for entry in os.scandir(parent):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            os.unlink(entry.path)


def build_drill_rotation(settings: BackupSettings, targets: dict[str, BackupTarget]) \
        -> tuple[dg.JobDefinition, dg.ScheduleDefinition]:
    """`restore_drill_job` (every target's `restored` check, one partition) and its nightly schedule."""
    keys = {t.name: dg.AssetCheckKey(dg.AssetKey(asset), RESTORED) for asset, t in targets.items()}
    # A job of checks alone does not carry a partitions definition in Dagster 1.13: the day goes in the run's
    # dagster/partition tag, which the partitioned checks read as their partition.
    job = dg.define_asset_job(DRILL_JOB, selection=dg.AssetSelection.checks(*keys.values()),
                              tags={KIND_TAG: DRILL_KIND},
                              description="Restores one day of backup targets into scratch and verifies it.")

    @dg.schedule(name=DRILL_SCHEDULE, job=job, cron_schedule=f"0 {DRILL_HOUR} * * *", execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING)
    def restore_drill_rotation(context: dg.ScheduleEvaluationContext):
        """Each night one target and one day of its retention window, in turn, so that every target and every day
        within the window is restored and verified over time."""
        night = context.scheduled_execution_time.astimezone(datetime.timezone.utc).date()
        picked = drill_for_night(list(targets.values()), settings.first_day, night)
        if picked is None:
            return dg.SkipReason("no backup day is due yet")
        target, day = picked
        return dg.RunRequest(run_key=f"drill-{night}", asset_check_keys=[keys[target.name]],
                             tags={"dagster/partition": day.isoformat(), "prodg/drill-target": target.name,
                                   "prodg/drill-night": night.isoformat()})

    return job, restore_drill_rotation
