"""The watch slice: what tells the operator something is wrong without being asked — the check schedules (each
family of checks on its own clock, prodg.yaml watch.every), the drift schedule (`in_sync`, or self-heal), the
Telegram notifiers (deploy failure, backup outcome, watched checks), the secret-rotation sensor and the
missed-backup sensor."""

from __future__ import annotations

from typing import Mapping, Sequence

import dagster as dg

from ..contract import IN_SYNC
from ..desired import DesiredState
from .backups_due import build_backup_missed_sensor
from .drift import build_drift_schedule, build_rotation_sensor
from .notifications import (
    backup_failure_notifier,
    backup_success_notifier,
    build_check_notifier,
    deploy_failure_notifier,
    restore_drill_notifier,
)
from .schedules import build_check_schedules


def watch_definitions(state: DesiredState, deploy_target: dg.AssetSelection,
                      watched: Mapping[str, Sequence[dg.AssetCheckKey]]) -> dg.Definitions:
    """`watched`: each check family's check keys (layers.definitions.watched_checks)."""
    told = [k for keys in watched.values() for k in keys]
    told += [dg.AssetCheckKey(dg.AssetKey(s.asset), IN_SYNC) for s in state.services.values()]
    sensors = [deploy_failure_notifier, backup_success_notifier, backup_failure_notifier, restore_drill_notifier,
               build_check_notifier(told, state.settings.watch), build_rotation_sensor(deploy_target)]
    if state.settings.backups.targets:
        sensors.append(build_backup_missed_sensor(state))
    return dg.Definitions(schedules=[build_drift_schedule(state, deploy_target),
                                     *build_check_schedules(state, watched)], sensors=sensors)
