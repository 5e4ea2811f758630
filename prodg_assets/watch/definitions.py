"""The watch slice: what tells the operator something is wrong without being asked — the drift schedule (the
`in_sync` checks every 15 minutes, or self-heal) and the Telegram notifiers (deploy failure, backup outcome, host checks)."""

from __future__ import annotations

import dagster as dg

from ..desired import DesiredState
from .drift import build_drift_schedule
from .notifications import (
    backup_failure_notifier,
    backup_success_notifier,
    deploy_failure_notifier,
    host_check_notifier,
    restore_drill_notifier,
)


def watch_definitions(state: DesiredState, deploy_target: dg.AssetSelection) -> dg.Definitions:
    return dg.Definitions(schedules=[build_drift_schedule(state, deploy_target)],
                          sensors=[deploy_failure_notifier, backup_success_notifier, backup_failure_notifier,
                                   host_check_notifier, restore_drill_notifier])
