"""What a failed deploy left undeployed. Dagster does not run an asset whose upstream step failed in the same run, so
one service without a runnable image (Grafana on a machine no registry serves it to) would keep Caddy and Prometheus,
which depend on it, from being deployed at all. After a deploy run of the git sensor fails, the sensor requests one
more run of the same commit for exactly the assets that run planned and neither materialised nor failed; in a run of
their own, nothing upstream of them is executed, so they deploy (a proxy then answers 502 for the missing backend
instead of not running). The failed assets stay failed and are not retried here. A rest that fails in turn is
followed by its own rest, each strictly smaller than the last (at least one of its assets failed), so it ends."""

from __future__ import annotations

import dagster as dg

from ..contract import REASON_TAG, REMAINDER_TAG, RUN_KEY_TAG


def decision_run(instance: dg.DagsterInstance, run_key: str) -> dg.DagsterRun | None:
    """The run the git sensor launched for `run_key` (the newest, if several)."""
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return runs[0] if runs else None


def failed_steps(instance: dg.DagsterInstance, run: dg.DagsterRun) -> set[str]:
    """The step keys that failed in `run`."""
    return {r.event_log_entry.dagster_event.step_key for r in instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE, limit=10_000).records if r.event_log_entry.dagster_event}


def undeployed(instance: dg.DagsterInstance, run: dg.DagsterRun, failed: set[str]) -> list[dg.AssetKey]:
    """The assets `run` planned to materialise that it neither materialised nor failed (its `failed` steps):
    skipped for a failed upstream, sorted."""
    def keys(event_type: dg.DagsterEventType) -> set[dg.AssetKey]:
        records = instance.get_records_for_run(run.run_id, of_type=event_type, limit=10_000).records
        return {r.event_log_entry.dagster_event.asset_key for r in records
                if r.event_log_entry.dagster_event and r.event_log_entry.dagster_event.asset_key}

    planned = keys(dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
    done = keys(dg.DagsterEventType.ASSET_MATERIALIZATION)
    return sorted((k for k in planned - done if k.to_python_identifier() not in failed),
                  key=lambda k: k.to_user_string())


def remainder_request(instance: dg.DagsterInstance, run_key: str, target: set[dg.AssetKey],
                      max_rounds: int = 10) -> dg.RunRequest | None:
    """The run that deploys what the failed run of `run_key` left undeployed, or None (it did not fail, it is still
    going, or nothing was left). A rest can fail in turn (a service skipped the first time fails now, and its
    dependents are skipped again): its own rest follows (`<run key>:rest:rest`, …), each round strictly smaller,
    at most `max_rounds`."""
    run = decision_run(instance, run_key)
    for _ in range(max_rounds):
        if run is None or run.status != dg.DagsterRunStatus.FAILURE:
            return None
        rest_run = decision_run(instance, f"{run_key}:rest")
        if rest_run is None:
            break
        run, run_key = rest_run, f"{run_key}:rest"
    else:
        return None
    failed = failed_steps(instance, run)
    rest = [k for k in undeployed(instance, run, failed) if k in target]
    if not rest:
        return None
    tags = {k: v for k, v in run.tags.items() if k.startswith("prodg/")}
    tags.update({REMAINDER_TAG: run.run_id,
                 REASON_TAG: f"the rest of run {run.run_id[:8]}, whose {', '.join(sorted(failed))[:300]} failed"})
    return dg.RunRequest(run_key=f"{run_key}:rest", asset_selection=rest, tags=tags)
