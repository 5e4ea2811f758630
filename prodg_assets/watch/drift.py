"""Drift detection: every 15 minutes (prodg.yaml deploy.drift_schedule) the live host is compared with the desired
state. Drift is recorded as failing `in_sync` checks; with `deploy.self_heal: true` the drifted services are
re-applied instead."""

import dagster as dg

from ..contract import (
    COMMIT_TAG,
    DRIFT_KIND,
    DRIFT_SCHEDULE,
    IN_SYNC,
    KIND_TAG,
    SELF_HEAL_KIND,
)
from ..desired import ConfigInvalid, DesiredState
from ..engine.client import DockerEngine
from ..engine.secrets import SecretSource
from ..gitops.repo import ConfigRepo


def build_drift_schedule(state: DesiredState, target: dg.AssetSelection) -> dg.ScheduleDefinition:
    cron = state.settings.deploy.drift_schedule

    @dg.schedule(name=DRIFT_SCHEDULE, cron_schedule=cron, target=target, execution_timezone="UTC",
                 default_status=dg.DefaultScheduleStatus.RUNNING)
    def drift_schedule(context: dg.ScheduleEvaluationContext, docker: DockerEngine, repo: ConfigRepo,
                       secrets: SecretSource):
        """Runs the `in_sync` checks of every service against the branch head; with self_heal, materialises the
        drifted services instead."""
        try:
            repo.fetch()
            commit = repo.head() if repo.is_git() else ""
            current = repo.desired_state(commit)
        except ConfigInvalid as exc:
            return dg.SkipReason(f"desired state does not validate: {exc.errors[0] if exc.errors else ''}")
        tags = {COMMIT_TAG: commit, KIND_TAG: DRIFT_KIND}
        if current.settings.deploy.self_heal:
            plan = docker.plan(current, secrets.values(), commit)
            drifted = [dg.AssetKey(current.services[a.service].asset) for a in plan.changes
                       if a.service in current.services]
            if not drifted:
                return dg.SkipReason("no drift")
            return dg.RunRequest(run_key=f"heal-{context.scheduled_execution_time.isoformat()}",
                                 asset_selection=drifted, tags={**tags, KIND_TAG: SELF_HEAL_KIND})
        checks = [dg.AssetCheckKey(dg.AssetKey(s.asset), IN_SYNC) for s in current.services.values()]
        return dg.RunRequest(run_key=f"drift-{context.scheduled_execution_time.isoformat()}", asset_selection=[],
                             asset_check_keys=checks, tags=tags)

    return drift_schedule
