"""Backups that did not happen are told, even when nothing ran at all: by prodg.yaml `watch.backups_due_by`
(04:00 UTC) each backup target's partition of the day before must be materialised. A sensor, not Dagster's
`FreshnessPolicy`: the policy is evaluated by the same daemon whose absence at 03:00 is the case to catch, and on
open source it only shows a status in the UI — the sensor tells Telegram, on its first tick after the daemon is
back. (The stack's Prometheus covers the daemon staying down: `ProdgBackupStale`, `ProdgDaemonHeartbeatStale`.)

Each day is told once (the cursor holds the last day looked at); a day that was late but complete by the first
tick after its due hour is not told. Days before `backups.start_date` are never due; a sensor's very first tick
looks at the newest due day only, and after an outage at most the last LOOK_BACK_DAYS days are told."""

from __future__ import annotations

import datetime
import json

import dagster as dg

from ..contract import BACKUP_KIND, BACKUP_MISSED, BACKUP_MISSED_SENSOR, KIND_TAG, PARTITION_TAG
from ..desired import DesiredState
from ..secret_source import SecretSource
from .notifications import TelegramNotifier

LOOK_BACK_DAYS = 7  # after a longer outage, the last week's days are told (older ones are the audit's)


def due_days(now: datetime.datetime, due: tuple[int, int], last_told: str, first_day: datetime.date) -> list[str]:
    """The partitions whose due moment (the next day at `due`, UTC) has passed since `last_told` (pure)."""
    due_moment = now.replace(hour=due[0], minute=due[1], second=0, microsecond=0)
    newest = (due_moment.date() if now >= due_moment else due_moment.date() - datetime.timedelta(days=1)) \
        - datetime.timedelta(days=1)
    oldest = max(newest - datetime.timedelta(days=LOOK_BACK_DAYS - 1), first_day)
    # a sensor that never ticked before starts at the newest due day (a new install is not told the past week)
    oldest = max(oldest, datetime.date.fromisoformat(last_told) + datetime.timedelta(days=1) if last_told else newest)
    days = []
    while oldest <= newest:
        days.append(oldest.isoformat())
        oldest += datetime.timedelta(days=1)
    return days


def _what_happened(instance: dg.DagsterInstance, asset: str, day: str) -> str:
    """"" when the day's partition of `asset` is materialised, else what became of it."""
    key = dg.AssetKey(asset)
    if day in instance.get_materialized_partitions(key):
        return ""
    runs = instance.get_runs(dg.RunsFilter(tags={PARTITION_TAG: day, KIND_TAG: BACKUP_KIND}), limit=5)
    mine = [r for r in runs if not r.asset_selection or key in r.asset_selection]
    if not mine:
        return "no backup run at all (was the Dagster daemon down at the backup hour?)"
    run = mine[0]
    if run.status == dg.DagsterRunStatus.FAILURE:
        return f"its backup run failed: {run.run_id}"
    if run.status in (dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.QUEUED,
                      dg.DagsterRunStatus.NOT_STARTED):
        return f"still running, late: {run.run_id}"
    return f"its backup run ended {run.status.value.lower()} without it: {run.run_id}"


def build_backup_missed_sensor(state: DesiredState) -> dg.SensorDefinition:
    backups, watch = state.settings.backups, state.settings.watch
    assets = sorted({t.asset for t in backups.targets})

    @dg.sensor(name=BACKUP_MISSED_SENSOR, minimum_interval_seconds=300,
               default_status=dg.DefaultSensorStatus.RUNNING)
    def backup_missed_sensor(context: dg.SensorEvaluationContext, telegram: TelegramNotifier,
                             secrets: SecretSource) -> dg.SkipReason:
        """By watch.backups_due_by (UTC), every backup target's partition of the day before is materialised;
        the targets whose day is missing or failed are told once per day — on the first tick after the hour,
        also when the daemon was down at the backup hour."""
        cursor = json.loads(context.cursor) if context.cursor else {}
        now = datetime.datetime.now(datetime.timezone.utc)
        days = due_days(now, watch.due_hour_minute, cursor.get("day", ""), backups.first_day)
        if not days:
            return dg.SkipReason("no day newly due")
        told = []
        for day in days:
            late = {a: what for a in assets if (what := _what_happened(context.instance, a, day))}
            if late:
                if BACKUP_MISSED not in telegram.events:
                    context.log.warning(f"backups of {day} missing: {', '.join(late)} (backup_missed is not in "
                                        f"notifications.telegram.on)")
                else:
                    lines = "\n".join(f"- {a}: {what}" for a, what in sorted(late.items()))
                    text = (f"❌ backup of {day} not complete by {watch.backups_due_by} UTC\n{lines}\n"
                            f"{telegram.ui_base_url.rstrip('/')}/runs")
                    if not telegram.send(text, secrets, context.log):
                        break  # this day again at the next tick
                told.append(f"{day}: {', '.join(sorted(late))}")
            cursor["day"] = day
        context.update_cursor(json.dumps(cursor, sort_keys=True))
        return dg.SkipReason(f"missed: {'; '.join(told)}" if told else f"{', '.join(days)}: every target complete")

    return backup_missed_sensor
