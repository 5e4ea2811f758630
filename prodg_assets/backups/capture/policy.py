"""What a backup partition's capture is allowed to be and what its lineage says: the instant the data is read
(`captured_at`), whether the day is over (a late capture is refused unless forced, and then marked), the commit
deployed on the host, the recipients it is encrypted to and the Object Lock date its objects are kept until."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Iterable, Optional

import dagster as dg

from ...agekeys import Recipient
from ...contract import CAPTURE_LATE_TAG, COMMIT_TAG, META_COMMIT
from ...gitops.repo import ConfigRepo, commit_id
from ...gitops.run import run_commit
from ...settings import BackupSettings, BackupTarget
from ..store.client import BackupStore
from ..store.manifest import Manifest, read_manifest
from ..store.objects import ObjectLock


@dataclass(frozen=True)
class Capture:
    day: str
    captured_at: datetime.datetime
    late: bool
    commit: str
    commit_source: str
    recipients: tuple[Recipient, ...]
    lock: Optional[ObjectLock]

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(r.fingerprint for r in self.recipients)

    @property
    def lock_text(self) -> str:
        return f"{self.lock.mode} until {self.lock.retain_until.isoformat()}" if self.lock else ""


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def is_late(day: str, now: datetime.datetime) -> bool:
    """A day before yesterday (UTC) is over: what is captured now is not that day's data. Yesterday is the 03:00
    schedule's own partition, and today may be backed up by hand."""
    return datetime.date.fromisoformat(day) < now.date() - datetime.timedelta(days=1)


def late_capture_requested(context) -> bool:
    return bool(context.run and context.run.tags.get(CAPTURE_LATE_TAG) == "true")


def deployed_commit(context, repo: ConfigRepo, service_assets: Iterable[str]) -> tuple[str, str]:
    """(commit, where it was read): the commit of the newest materialisation of any managed service (what the host
    runs now), else the run's `prodg/commit` tag or the tracked branch's head."""
    keys = [dg.AssetKey(a) for a in service_assets]
    newest = None
    if keys:
        for event in context.instance.get_latest_materialization_events(keys).values():
            if event is None or event.asset_materialization is None:
                continue
            entry = event.asset_materialization.metadata.get(META_COMMIT)
            commit = str(getattr(entry, "value", entry) or "")
            if commit and (newest is None or event.timestamp > newest[0]):
                newest = (event.timestamp, commit)
    if newest:  # recorded metadata reaches git's arguments too (a runless event can record anything)
        return commit_id(newest[1], "the commit the newest service materialisation recorded"), "deployed"
    tagged = context.run.tags.get(COMMIT_TAG) if context.run else None
    commit = run_commit(context, repo)  # the tag when there is one, checked to be a commit id
    return commit, "run tag" if tagged else "branch head" if commit else "none"


def retain_until(day: str, retention_days: int, now: datetime.datetime) -> datetime.datetime:
    """The Object Lock date of a partition's objects: the end of its retention (its day + retention_days + 1, at
    00:00 UTC, when retention may delete it), and never less than a day from now (S3 refuses a past date; a late
    capture of an old day is still kept a day)."""
    start = datetime.datetime.combine(datetime.date.fromisoformat(day), datetime.time(), datetime.timezone.utc)
    return max(start + datetime.timedelta(days=retention_days + 1), now + datetime.timedelta(days=1))


def begin_capture(context, settings: BackupSettings, target: BackupTarget, store: BackupStore, repo: ConfigRepo,
                  service_assets: Iterable[str]) -> Capture:
    day, now = context.partition_key, now_utc()
    commit, commit_source = deployed_commit(context, repo, service_assets)
    lock = ObjectLock(settings.object_lock_mode, retain_until(day, target.retention_days, now)) \
        if store.object_lock_enabled() else None
    recipients = tuple(Recipient.parse(text) for _, text in settings.recipients)
    return Capture(day, now, is_late(day, now), commit, commit_source, recipients, lock)


class LateCapture(Exception):
    """A backup of a day that is over, never captured, and not forced: nothing was captured."""


def earlier_capture(context, cap: Capture, store: BackupStore, target: BackupTarget) -> Optional[Manifest]:
    """For a day that is over (`cap.late`) and not forced: its manifest when it was captured before (re-recorded,
    not captured anew); raises LateCapture when it never was. None: capture now (the day is not over, or the run
    carries `prodg/capture-late=true`, and then the capture is marked captured_late)."""
    if not cap.late or late_capture_requested(context):
        return None
    earlier = read_manifest(store, target.prefix, cap.day)
    if earlier is not None:
        return earlier
    raise LateCapture(
        f"{target.name} backup of {cap.day}: that day is over (now {cap.captured_at:%Y-%m-%d %H:%M} UTC) and was "
        f"never captured; what could be read now is today's data, not {cap.day}'s, so nothing was captured. To "
        f"store today's data under {cap.day} anyway, marked captured_late, run it again with the tag "
        f"{CAPTURE_LATE_TAG}=true")
