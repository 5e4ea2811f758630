"""Drift found by the schedule (and healed when opted in), and the operators told on Telegram when a deploy fails."""

import datetime
import os
import subprocess
import uuid

import dagster as dg
import pytest

from prodg_assets.contract import DRIFT_SCHEDULE
from tests.conftest import PRODG_CLI, ROOT, TEST_SECRETS, Testbed, make_testbed
from tests.standins.telegram import TelegramStandIn

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def stack(tmp_path_factory, docker_client):
    tmp = str(tmp_path_factory.mktemp("drift"))
    bed = make_testbed(tmp, docker_client, f"prodgd{uuid.uuid4().hex[:8]}")
    old_env = dict(os.environ)
    with TelegramStandIn(TEST_SECRETS["TELEGRAM_BOT_TOKEN"]) as telegram:
        bed.env["TELEGRAM_API_URL"] = telegram.url
        os.environ.update(bed.env)
        try:
            bed.cleanup()
            assert bed.materialize().success
            yield bed, telegram
        finally:
            bed.cleanup()
            os.environ.clear()
            os.environ.update(old_env)


@pytest.fixture(autouse=True)
def at_baseline(stack):
    """Each test starts from the stack as first deployed: what a test committed is put back and converged afterwards,
    so no test sees another's commits, drift or Telegram settings."""
    bed, telegram = stack
    telegram.messages.clear()  # what an earlier test had sent (its slow request, answered late, may still land)
    telegram.requests.clear()
    yield
    telegram.status, telegram.delay_s = 200, 0.0
    if bed.reset_to(bed.commits[0]):
        assert bed.materialize().success


def redis_restart_policy_drifted(bed: Testbed, policy: str = "no") -> None:
    """Drift made by hand: Redis' restart policy changed under prodg, as `docker update` on the host would."""
    subprocess.run(["docker", "update", f"--restart={policy}", f"{bed.project}-redis"], check=True, capture_output=True)


def schedule_request(bed: Testbed, instance) -> dg.RunRequest | dg.SkipReason:
    defs = bed.defs()
    schedule = defs.resolve_schedule_def(DRIFT_SCHEDULE)
    resources = {k: defs.resources[k] for k in ("docker", "repo", "secrets")}
    when = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    with dg.build_schedule_context(instance=instance, resources=resources, scheduled_execution_time=when) as ctx:
        data = schedule.evaluate_tick(ctx)
    return data


def run_checks(bed: Testbed, instance, request: dg.RunRequest) -> dict[str, tuple[bool, dict]]:
    job = bed.defs().resolve_implicit_global_asset_job_def()
    job = job.get_subset(asset_selection=set(request.asset_selection or []),
                         asset_check_selection=set(request.asset_check_keys or []))
    result = job.execute_in_process(instance=instance, tags=request.tags)
    return {e.asset_check_evaluation_data.asset_key.to_user_string():
            (e.asset_check_evaluation_data.passed, e.asset_check_evaluation_data.metadata)
            for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"}


def test_drift_schedule_records_drift_as_failing_checks_with_the_fields(stack):
    bed, _ = stack
    redis_restart_policy_drifted(bed)
    try:
        with dg.instance_for_test() as instance:
            data = schedule_request(bed, instance)
            (request,) = data.run_requests
            assert not request.asset_selection
            assert {k.name for k in request.asset_check_keys} == {"in_sync"}
            results = run_checks(bed, instance, request)
        assert results["redis"][0] is False
        assert results["redis"][1]["fields"].value == "restart"
        assert all(passed for asset, (passed, _) in results.items() if asset != "redis")
        assert bed.containers()["redis"].attrs["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
    finally:
        redis_restart_policy_drifted(bed, "unless-stopped")  # the drift undone by hand, as it was made


def test_self_heal_reapplies_only_the_drifted_service(stack):
    bed, _ = stack
    bed.edit("prodg.yaml", "  stop_timeout_s: 5\n", "  stop_timeout_s: 5\n  self_heal: true\n")
    bed.commit("self-heal on")
    redis_restart_policy_drifted(bed)
    before = {s: c.id for s, c in bed.containers().items()}
    with dg.instance_for_test() as instance:
        (request,) = schedule_request(bed, instance).run_requests
        assert {k.to_user_string() for k in request.asset_selection} == {"redis"}
        assert request.tags["prodg/kind"] == "self_heal"
        job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=set(request.asset_selection))
        assert job.execute_in_process(instance=instance, tags=request.tags).success
        after = {s: c.id for s, c in bed.containers().items()}
        assert after["redis"] != before["redis"]
        assert {s: i for s, i in after.items() if s != "redis"} == {s: i for s, i in before.items() if s != "redis"}
        again = schedule_request(bed, instance)
        assert not again.run_requests and "no drift" in again.skip_message


def notify(bed: Testbed, instance, result: dg.ExecuteInProcessResult) -> None:
    defs = bed.defs()
    sensor = defs.resolve_sensor_def("deploy_failure_notifier")
    run = instance.get_run_by_id(result.run_id)
    failure = [r.dagster_event for r in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)][0]
    ctx = dg.build_run_status_sensor_context(
        sensor_name="deploy_failure_notifier", dagster_event=failure, dagster_instance=instance, dagster_run=run,
        resources={"telegram": defs.resources["telegram"], "secrets": defs.resources["secrets"]})
    sensor(ctx)


@pytest.mark.fault(
    fault="Telegram down (HTTP 500), then slow (answers after 30 s)",
    happens="the notifier gives up (warning; 5 s timeout); the run's status and the containers are untouched")
def test_telegram_is_told_when_a_deploys_healthcheck_fails_and_a_dead_telegram_changes_nothing(stack, measured):
    bed, telegram = stack
    bed.edit("hermes-api/app/main.py", 'return {"status": "ok"}', 'return {"status": "ok", "boom": 1 / 0}')
    sha = bed.commit("hermes: crashing release")
    with dg.instance_for_test() as instance:
        result = bed.materialize(selection="hermes_api", instance=instance)
        assert not result.success
        notify(bed, instance, result)
        (message,) = telegram.messages
        assert message["chat_id"] == "-1001234"
        text = message["text"]
        assert "deploy failed" in text and sha[:12] in text and "hermes_api" in text
        assert "healthcheck" in text
        assert f"http://127.0.0.1:3000/runs/{result.run_id}" in text
        assert not any(v in text for v in TEST_SECRETS.values())
        # Telegram down: the notifier gives up quietly; nothing raised, nothing else affected.
        telegram.status = 500
        notify(bed, instance, result)
        assert len(telegram.messages) == 1
        # Telegram slow (answers after 30 s): the notifier gives up at its timeout (5 s); nothing else waits on it.
        # Shown by what the stand-in saw, not by a clock: one request, no retry, and the notifier was back before
        # Telegram had accepted the message (had it waited for the answer, the message would be recorded by now).
        telegram.status, telegram.delay_s = 200, 30.0
        requests_before = len(telegram.requests)
        notify(bed, instance, result)
        assert len(telegram.requests) == requests_before + 1
        assert len(telegram.messages) == 1
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE
        # Telegram answers again: the same notification, sent again, is delivered (the slow request's message is
        # only recorded once the stand-in's 30 s are up, so the message seen now is the retry's).
        telegram.delay_s = 0.0
        delivered_before = len(telegram.messages)
        notify(bed, instance, result)
        delivered = telegram.messages[delivered_before:]
        assert measured.retried(converged=[m["text"] for m in delivered] == [text]), delivered
        assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE
    assert bed.containers()["hermes-api"].status == "running"


def test_a_failed_drift_run_is_not_reported_as_a_failed_deploy(stack, tmp_path):
    """The drift schedule's check-only run fails (the Engine does not answer it): that is no deploy, and Telegram is
    not told one failed; a deploy that fails beside it is."""
    bed, telegram = stack

    def told(run) -> list[str]:  # the messages about one run (another test's slow message may still land)
        return [m["text"] for m in telegram.messages if run.run_id in m["text"]]

    with dg.instance_for_test() as instance:
        (request,) = schedule_request(bed, instance).run_requests
        job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(
            asset_selection=set(), asset_check_selection=set(request.asset_check_keys))
        os.environ["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"  # nothing listens there
        try:
            drift = job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
        finally:
            del os.environ["DOCKER_HOST"]
        assert not drift.success
        notify(bed, instance, drift)
        assert told(drift) == []
        bed.edit("hermes-api/app/main.py", 'return {"status": "ok"}', 'return {"status": "ok", "boom": 1 / 0}')
        bed.commit("hermes: crashing release")
        deploy = bed.materialize(selection="hermes_api", instance=instance)
        assert not deploy.success
        notify(bed, instance, deploy)
        assert [text.splitlines()[0] for text in told(deploy)] == ["❌ prodg deploy failed"]


def test_break_glass_rollback_to_an_older_commit_shows_in_the_lineage(stack, tmp_path):
    bed, _ = stack
    older = bed.commits[-1]
    bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
             "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      REDIS_RELEASE: \"2\"\n")
    newer = bed.commit("redis: release 2")
    assert bed.materialize(selection="redis").success
    assert bed.containers()["redis"].labels["prodg.commit"] == newer
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**bed.env, "DAGSTER_HOME": str(home)}
    proc = subprocess.run([*PRODG_CLI, "deploy", "--commit", older, "--select", "redis"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"deploying {older[:12]}" in proc.stdout
    redis = bed.containers()["redis"]
    assert redis.labels["prodg.commit"] == older
    assert not any(e.startswith("REDIS_RELEASE=") for e in redis.attrs["Config"]["Env"])
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("redis"))
        assert event.asset_materialization.metadata["commit"].value == older
        run = instance.get_run_by_id(event.run_id)
        assert run.tags["prodg/commit"] == older and run.tags["prodg/kind"] == "manual_deploy"


def test_two_deploy_runs_never_apply_to_the_same_service_at_once(stack, tmp_path):
    """Each service asset has its own pool (limit 1 in docker/dev/dagster.yaml): two runs deploying Redis at once
    take turns."""
    import shutil

    bed, _ = stack
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(f"{ROOT}/docker/dev/dagster.yaml", home / "dagster.yaml")
    shas = []
    for value in ("a", "b"):
        bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                 f"      REDIS_PASSWORD: ${{REDIS_PASSWORD}}\n      TURN_{value.upper()}: \"{value}\"\n")
        shas.append(bed.commit(f"redis: turn {value}"))
    env = {**bed.env, "DAGSTER_HOME": str(home)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs()  # create the storage once, before two processes race to migrate it
    procs = [subprocess.Popen([*PRODG_CLI, "deploy", "--commit", sha, "--select", "redis"], env=env,
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for sha in shas]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), ["\n".join(line for line in o.splitlines()
                                                          if "STEP_FAILURE" in line or "Error" in line
                                                          or "Failure" in line)[-3000:]
                                                for o in outputs]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        results = {r.tags["prodg/commit"]: r for r in instance.get_runs()}
        assert set(results) == set(shas)
        made, stopped = {}, {}
        for sha, result in results.items():
            assert result.status == dg.DagsterRunStatus.SUCCESS
            logs = instance.all_logs(result.run_id)
            made[sha] = next(r.dagster_event.materialization.metadata["container_id"].value for r in logs
                             if r.dagster_event and r.dagster_event.event_type_value == "ASSET_MATERIALIZATION")
            stopped[sha] = [r.user_message for r in logs if "stopping previous container" in (r.user_message or "")]
    # The applies took turns (the pool, and the service's lock where SQLite's slot claim is not atomic: engine/
    # locks.py): the one that came second stopped the container the first one made, never the one both found.
    second = next(sha for sha in shas if made[sha] == bed.containers()["redis"].id)
    (first,) = set(shas) - {second}
    assert len(stopped[second]) == 1 and f"previous container {made[first][:12]} " in stopped[second][0], \
        (stopped, made)
    assert made[first][:12] not in " ".join(stopped[first]), (stopped, made)
