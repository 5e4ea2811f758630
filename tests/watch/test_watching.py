"""Watching between events, on the test bed's real Engine with the Telegram stand-in: the health schedule's run
(as the daemon would launch it from the schedule's tick) sees a container killed by hand, the check notifier tells
it once and tells its recovery; the missed-backup sensor tells a day with no backup once — on its first tick, as
after a daemon that was down at 03:00 — and never again after a restart."""

from __future__ import annotations

import datetime
import os

import dagster as dg
import pytest

from prodg_assets.contract import BACKUP_MISSED_SENSOR, CHECK_NOTIFIER, CHECK_SCHEDULE_PREFIX
from tests.standins.telegram import TelegramStandIn

from ..conftest import TEST_SECRETS, Testbed

pytestmark = pytest.mark.docker


@pytest.fixture()
def telegram(testbed: Testbed):
    """The Telegram stand-in, reached through the bed's TELEGRAM_API_URL; the bed's first commit put back after."""
    old_url = testbed.env.get("TELEGRAM_API_URL")
    with TelegramStandIn(TEST_SECRETS["TELEGRAM_BOT_TOKEN"]) as stand_in:
        os.environ["TELEGRAM_API_URL"] = testbed.env["TELEGRAM_API_URL"] = stand_in.url
        try:
            yield stand_in
        finally:
            for env in (os.environ, testbed.env):
                if old_url is None:
                    env.pop("TELEGRAM_API_URL", None)
                else:
                    env["TELEGRAM_API_URL"] = old_url
            testbed.reset_to(testbed.commits[0])


def health_round(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """One tick of the health schedule and the run it asks for, executed as the daemon's run would be."""
    schedule = defs.resolve_schedule_def(f"{CHECK_SCHEDULE_PREFIX}health")
    with dg.build_schedule_context(instance=instance, resources={"repo": defs.resources["repo"]},
                                   scheduled_execution_time=datetime.datetime.now(datetime.timezone.utc)) as ctx:
        (request,) = schedule.evaluate_tick(ctx).run_requests
    job = defs.get_repository_def().get_job(schedule.job_name)
    return job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)


def tick(defs: dg.Definitions, name: str, instance: dg.DagsterInstance, cursor: str | None) -> str | None:
    sensor = defs.resolve_sensor_def(name)
    resources = {k: defs.resources[k] for k in ("telegram", "secrets")}
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as ctx:
        return sensor.evaluate_tick(ctx).cursor


def about(telegram: TelegramStandIn, prefix: str) -> list[str]:
    return [m["text"].splitlines()[0] for m in telegram.messages if m["text"].split(" ", 1)[1].startswith(prefix)]


def told_to_telegram(bed: Testbed, event: str) -> None:
    """The bed's notifications.telegram.on with `event` added, committed."""
    bed.edit("prodg.yaml", "    on: [deploy_failure, backup_success, backup_failure]\n",
             f"    on: [deploy_failure, backup_success, backup_failure, {event}]\n")
    bed.commit(f"{event} is told to Telegram")


def redis_watched(bed: Testbed, instance: dg.DagsterInstance) -> dg.Definitions:
    """Watched checks told to Telegram, Redis deployed: the definitions the daemon would load."""
    told_to_telegram(bed, "check")
    assert bed.materialize(selection="host_baseline,docker_network,secrets_env,redis", instance=instance).success
    return bed.defs()


def test_a_container_killed_by_hand_is_told_once_and_so_is_its_recovery(testbed: Testbed, telegram):
    bed = testbed
    with dg.instance_for_test() as instance:
        defs = redis_watched(bed, instance)
        first = health_round(defs, instance)
        assert {e.asset_check_key.name for e in first.get_asset_check_evaluations()
                if e.asset_key == dg.AssetKey("redis")} == {"healthy", "redis_answers_ping"}
        assert not first.get_asset_materialization_events()  # a check round deploys nothing
        cursor = tick(defs, CHECK_NOTIFIER, instance, None)
        assert about(telegram, "redis") == []  # green from the start: nothing to tell

        bed.containers()["redis"].kill()
        health_round(defs, instance)
        cursor = tick(defs, CHECK_NOTIFIER, instance, cursor)
        cursor = tick(defs, CHECK_NOTIFIER, instance, cursor)  # a second tick: nothing new
        told = about(telegram, "redis")
        assert sorted(told) == ["⚠️ redis healthy is red", "⚠️ redis redis_answers_ping is red"]
        killed = next(m["text"] for m in telegram.messages if m["text"].startswith("⚠️ redis healthy"))
        assert "not running: exited" in killed and not any(v in killed for v in TEST_SECRETS.values())

        bed.containers()["redis"].start()
        health_round(defs, instance)
        cursor = tick(defs, CHECK_NOTIFIER, instance, cursor)
        tick(defs, CHECK_NOTIFIER, instance, cursor)
        recovered = [t.split(" (after ")[0] for t in about(telegram, "redis")[2:]]
        assert sorted(recovered) == ["✅ redis healthy is green again", "✅ redis redis_answers_ping is green again"]


def test_a_day_without_a_backup_is_told_once_on_the_first_tick_and_never_again(testbed: Testbed, telegram):
    bed = testbed
    start = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=10)).isoformat()
    told_to_telegram(bed, "backup_missed")
    bed.add_postgres_backups("prodg-watch", "http://127.0.0.1:9", start)  # the store is never reached here
    with dg.instance_for_test() as instance:
        defs = bed.defs()
        cursor = tick(defs, BACKUP_MISSED_SENSOR, instance, None)  # the first tick, as after a daemon down at 03:00
        (message,) = [m["text"] for m in telegram.messages]
        head, line = message.splitlines()[:2]
        assert head.startswith("❌ backup of ") and head.endswith("not complete by 04:00 UTC")
        assert line == "- postgres_backup: no backup run at all (was the Dagster daemon down at the backup hour?)"
        day = head.split()[3]
        assert day == cursor.split('"day": "')[1][:10]
        # the daemon restarted: its cursor kept, nothing told again
        tick(defs, BACKUP_MISSED_SENSOR, instance, cursor)
        assert len(telegram.messages) == 1
        # the day made complete (here reported as an external materialisation): a sensor starting afresh tells
        # nothing about it
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key="postgres_backup", partition=day))
        tick(defs, BACKUP_MISSED_SENSOR, instance, None)
        assert len(telegram.messages) == 1


def test_a_flapping_container_is_told_once_as_flapping_and_a_restart_resends_nothing(testbed: Testbed, telegram):
    bed = testbed
    with dg.instance_for_test() as instance:
        defs = redis_watched(bed, instance)
        health_round(defs, instance)
        cursor = tick(defs, CHECK_NOTIFIER, instance, None)
        for _ in range(3):  # killed and started again, three times over: six changes within the hour
            bed.containers()["redis"].kill()
            health_round(defs, instance)
            cursor = tick(defs, CHECK_NOTIFIER, instance, cursor)
            bed.containers()["redis"].start()
            health_round(defs, instance)
            cursor = tick(defs, CHECK_NOTIFIER, instance, cursor)
        told = [t.split(" (after ")[0] for t in about(telegram, "redis healthy")]
        assert told == ["⚠️ redis healthy is red", "✅ redis healthy is green again", "⚠️ redis healthy is red",
                        "🔁 redis healthy is flapping: 4 changes within 60 min; told again once it settles"]
        # the daemon restarted: the sensor starts again from the cursor it kept, and tells nothing twice
        tick(defs, CHECK_NOTIFIER, instance, cursor)
        assert [t.split(" (after ")[0] for t in about(telegram, "redis healthy")] == told
