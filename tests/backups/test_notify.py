"""Telegram hears of every backup, as in the seed: success and failure, with the day and a link to the run."""

import datetime

import dagster as dg
import pytest

from prodg_assets.backups.store.client import BackupStore
from prodg_assets.secret_source import SecretSource
from prodg_assets.watch.notifications import TelegramNotifier, backup_failure_notifier, backup_success_notifier
from tests.backups.conftest import SECRETS, STORE_KEY_ID, STORE_SECRET
from tests.standins.telegram import TelegramStandIn

pytestmark = pytest.mark.docker
TOKEN = "4242:backup-notify-Token"


def evaluate(sensor, instance, result, status, telegram_url, secrets_file):
    run = instance.get_run_by_id(result.run_id)
    event = [r.dagster_event for r in instance.all_logs(result.run_id, of_type=status)][0]
    ctx = dg.build_run_status_sensor_context(
        sensor_name=sensor.name, dagster_event=event, dagster_instance=instance, dagster_run=run,
        resources={"telegram": TelegramNotifier(api_base_url=telegram_url, chat_id="-100777"),
                   "secrets": SecretSource(source="env_file", env_file=str(secrets_file))})
    sensor(ctx)


def test_backup_success_and_failure_reach_telegram(bed, clean_store, tmp_path):
    secrets_file = tmp_path / "notify.env"
    secrets_file.write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    day = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=3)).isoformat()
    with TelegramStandIn(TOKEN) as telegram, dg.instance_for_test() as instance:
        ok = bed.materialize(["postgres_backup"], day, instance)
        assert ok.success
        evaluate(backup_success_notifier, instance, ok, dg.DagsterEventType.RUN_SUCCESS, telegram.url, secrets_file)
        failed = bed.materialize(["postgres_backup"], day, instance, raise_on_error=False,
                                 backup_store=BackupStore(endpoint_url=bed.store_url, region="us-east-1",
                                                          bucket="no-such-bucket", access_key_id=STORE_KEY_ID,
                                                          secret_access_key=STORE_SECRET))
        assert not failed.success
        evaluate(backup_failure_notifier, instance, failed, dg.DagsterEventType.RUN_FAILURE, telegram.url,
                 secrets_file)
        good, bad = telegram.messages
        assert f"backup of {day} succeeded" in good["text"] and "postgres_backup" in good["text"]
        assert f"/runs/{ok.run_id}" in good["text"]
        assert f"backup of {day} failed" in bad["text"] and "postgres_backup" in bad["text"]
        assert f"/runs/{failed.run_id}" in bad["text"]
        for message in telegram.messages:
            assert not any(v in message["text"] for v in (*SECRETS.values(), STORE_SECRET, TOKEN))
