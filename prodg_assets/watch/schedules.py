"""Checks on a clock: one schedule per check family (prodg.yaml `watch.every`: health, exposure, host, secrets, tls,
dns) that re-runs that family's checks against the live host without deploying anything. `in_sync` is the drift
schedule's (drift.py). A run is tagged `prodg/kind=checks` (so no notifier takes it for a deploy) but carries no
`prodg/commit`: it deploys no commit, and its checks read the branch head (gitops.run.run_commit)."""

from __future__ import annotations

from typing import Mapping, Sequence

import dagster as dg

from ..contract import CHECK_SCHEDULE_PREFIX, CHECKS_KIND, KIND_TAG, WATCHED_TAG
from ..desired import ConfigInvalid, DesiredState
from ..gitops.repo import ConfigRepo
from ..settings import every_cron


def _check_schedule(family: str, keys: Sequence[dg.AssetCheckKey], cron: str, interval: str) -> dg.ScheduleDefinition:
    @dg.schedule(name=f"{CHECK_SCHEDULE_PREFIX}{family}", cron_schedule=cron, execution_timezone="UTC",
                 target=dg.AssetSelection.checks(*keys), default_status=dg.DefaultScheduleStatus.RUNNING,
                 description=f"Every {interval} (prodg.yaml watch.every.{family}): the {family} checks of the live "
                             f"host ({len(keys)}), nothing deployed.")
    def _schedule(context: dg.ScheduleEvaluationContext, repo: ConfigRepo):
        try:
            repo.desired_state(repo.head() if repo.is_git() else "")
        except ConfigInvalid as exc:  # the checks would only say that; the git sensor already does
            return dg.SkipReason(f"desired state does not validate: {exc.errors[0] if exc.errors else ''}")
        return dg.RunRequest(run_key=f"checks-{family}-{context.scheduled_execution_time.isoformat()}",
                             tags={KIND_TAG: CHECKS_KIND, WATCHED_TAG: family})

    return _schedule


def build_check_schedules(state: DesiredState,
                          watched: Mapping[str, Sequence[dg.AssetCheckKey]]) -> list[dg.ScheduleDefinition]:
    """One schedule per family that has checks (no DNS records: no dns schedule)."""
    out = []
    for family, keys in sorted(watched.items()):
        interval = state.settings.watch.interval(family)
        cron, _ = every_cron(interval)  # the loader refused any interval without a cron
        if keys and cron:
            out.append(_check_schedule(family, keys, cron, interval))
    return out
