"""Telegram notifications: a deploy failed, a backup succeeded or failed, a host check turned red (or green again).

A notifier that cannot reach Telegram logs a warning and gives up: it never fails or delays a deploy.
"""

import json

import dagster as dg

from ..contract import (
    BACKUP_FAILURE,
    BACKUP_FAILURE_NOTIFIER,
    BACKUP_KIND,
    BACKUP_SUCCESS,
    BACKUP_SUCCESS_NOTIFIER,
    COMMIT_TAG,
    DEPLOY_FAILURE,
    DEPLOY_FAILURE_NOTIFIER,
    DRIFT_KIND,
    DRILL_KIND,
    DRILL_NOTIFIER,
    EXPOSURE,
    HOST_ASSET,
    HOST_CHECK,
    HOST_CHECK_NOTIFIER,
    HOST_CONFORMS,
    HOST_SAFE_TO_DEPLOY,
    KIND_TAG,
    PARTITION_TAG,
    RESTORED,
)
from ..desired import sha256_hex
from ..engine.secrets import SecretSource, redact


class TelegramNotifier(dg.ConfigurableResource):
    """Telegram's Bot API at `api_base_url` (a local stand-in in tests). The bot token is read from the secrets
    source by name (`token_secret`), when a message is sent — it is never part of the run config."""

    api_base_url: str = "https://api.telegram.org"
    chat_id: str = ""
    token_secret: str = "TELEGRAM_BOT_TOKEN"
    ui_base_url: str = "http://127.0.0.1:3000"
    events: list[str] = [DEPLOY_FAILURE, BACKUP_SUCCESS, BACKUP_FAILURE, HOST_CHECK]
    timeout_s: float = 5.0

    def send(self, text: str, secrets: SecretSource, log=None) -> bool:
        import requests  # imported on first call: loading the code location does not pay for it

        values = {}
        try:
            values = secrets.values()
            token = values.get(self.token_secret, "")
            if not token or not self.chat_id or self.chat_id == "0":
                raise RuntimeError(f"no bot token ({self.token_secret}) or chat id configured")
            resp = requests.post(f"{self.api_base_url.rstrip('/')}/bot{token}/sendMessage",
                                 json={"chat_id": self.chat_id, "text": text, "disable_web_page_preview": True},
                                 timeout=self.timeout_s)
            if resp.status_code != 200 or not resp.json().get("ok"):
                raise RuntimeError(f"Telegram answered HTTP {resp.status_code}")
            return True
        except Exception as exc:  # a notifier never fails what it reports on
            if log:
                log.warning(f"Telegram notification not sent: {redact(str(exc), values)}")
            return False


def run_link(notifier: TelegramNotifier, run_id: str) -> str:
    return f"{notifier.ui_base_url.rstrip('/')}/runs/{run_id}"


def run_assets(instance: dg.DagsterInstance, run: dg.DagsterRun) -> str:
    """The assets a run was to materialise: its selection, else what it planned (runs of a whole job)."""
    keys = set(run.asset_selection or [])
    if not keys:
        planned = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED)
        keys = {r.dagster_event.asset_key for r in planned if r.dagster_event and r.dagster_event.asset_key}
    return ", ".join(sorted(k.to_user_string() for k in keys)) or run.job_name


def deploy_failure_message(run: dg.DagsterRun, reason: str, notifier: TelegramNotifier, assets: str) -> str:
    commit = run.tags.get(COMMIT_TAG, "")
    return (f"❌ prodg deploy failed\ncommit: {commit[:12] or 'working tree'}\nassets: {assets}\n"
            f"reason: {reason[:500]}\n{run_link(notifier, run.run_id)}")


def is_deploy(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """A run that was to change the host: neither a backup nor the drift schedule's run, and it planned to
    materialise at least one asset (a run of checks alone deploys nothing)."""
    if run.tags.get(KIND_TAG) in (BACKUP_KIND, DRIFT_KIND):
        return False
    if run.asset_selection:
        return True
    return bool(instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, limit=1).records)


@dg.run_failure_sensor(name=DEPLOY_FAILURE_NOTIFIER, default_status=dg.DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=15)
def deploy_failure_notifier(context: dg.RunFailureSensorContext, telegram: TelegramNotifier,
                            secrets: SecretSource) -> None:
    """Sends a Telegram message when a deploy run fails: the commit, the assets, the reason and a link to the run."""
    run = context.dagster_run
    if DEPLOY_FAILURE not in telegram.events or not is_deploy(context.instance, run):
        return
    reason = context.failure_event.message or "run failed"
    steps = [e for e in context.get_step_failure_events()]
    if steps:
        reason = "; ".join(f"{e.step_key}: {e.event_specific_data.error.message.strip().splitlines()[0]}"
                           for e in steps if e.event_specific_data and e.event_specific_data.error)
    telegram.send(deploy_failure_message(run, redact(reason, secrets.values()), telegram,
                                         run_assets(context.instance, run)), secrets, context.log)


def backup_message(run: dg.DagsterRun, ok: bool, notifier: TelegramNotifier, assets: str, reason: str = "") -> str:
    day = run.tags.get(PARTITION_TAG, "?")
    what = "restore drill" if run.tags.get(KIND_TAG) == DRILL_KIND else "backup"
    head = f"✅ {what} of {day} succeeded" if ok else f"❌ {what} of {day} failed"
    tail = f"\nreason: {reason[:500]}" if reason else ""
    return f"{head}\nassets: {assets}\ncommit: {run.tags.get(COMMIT_TAG, '')[:12]}{tail}\n{run_link(notifier, run.run_id)}"


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, name=BACKUP_SUCCESS_NOTIFIER,
                      default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=15)
def backup_success_notifier(context: dg.RunStatusSensorContext, telegram: TelegramNotifier,
                            secrets: SecretSource) -> None:
    """Tells Telegram when a backup run succeeds (the seed's behaviour): the day, the targets, a link."""
    run = context.dagster_run
    if run.tags.get(KIND_TAG) == BACKUP_KIND and BACKUP_SUCCESS in telegram.events:
        telegram.send(backup_message(run, True, telegram, run_assets(context.instance, run)), secrets, context.log)


@dg.run_failure_sensor(name=BACKUP_FAILURE_NOTIFIER, default_status=dg.DefaultSensorStatus.RUNNING,
                       minimum_interval_seconds=15)
def backup_failure_notifier(context: dg.RunFailureSensorContext, telegram: TelegramNotifier,
                            secrets: SecretSource) -> None:
    """Tells Telegram when a backup run fails: the day, the targets, the reason, a link."""
    run = context.dagster_run
    if run.tags.get(KIND_TAG) not in (BACKUP_KIND, DRILL_KIND) or BACKUP_FAILURE not in telegram.events:
        return
    reason = "; ".join(f"{e.step_key}: {e.event_specific_data.error.message.strip().splitlines()[0]}"
                       for e in context.get_step_failure_events()
                       if e.event_specific_data and e.event_specific_data.error) or (context.failure_event.message or "")
    telegram.send(backup_message(run, False, telegram, run_assets(context.instance, run),
                                 redact(reason, secrets.values())), secrets, context.log)


def drill_results(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, bool, str]]:
    """(target asset, passed, what failed) of each `restored` check the drill run evaluated."""
    out = []
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if not isinstance(evaluation, dg.AssetCheckEvaluation) or evaluation.asset_check_key.name != RESTORED:
            continue
        verified = evaluation.metadata.get("verified")
        failed = [line for line in str(getattr(verified, "value", verified or "")).splitlines() if "❌" in line]
        out.append((evaluation.asset_key.to_user_string(), evaluation.passed, "; ".join(failed)))
    return out


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, name=DRILL_NOTIFIER,
                      default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=15)
def restore_drill_notifier(context: dg.RunStatusSensorContext, telegram: TelegramNotifier,
                           secrets: SecretSource) -> None:
    """Tells Telegram what the night's restore drill proved: restored and verified (with backup_success), or a
    day that did not restore (with backup_failure) and what failed. A drill run that crashed is the failure
    notifier's."""
    run = context.dagster_run
    if run.tags.get(KIND_TAG) != DRILL_KIND:
        return
    day = run.tags.get(PARTITION_TAG, "?")
    for asset, passed, failed in drill_results(context.instance, run.run_id):
        if passed and BACKUP_SUCCESS in telegram.events:
            text = f"✅ restore drill: {asset} of {day} restored and verified"
        elif not passed and BACKUP_FAILURE in telegram.events:
            text = f"❌ restore drill: {asset} of {day} did NOT restore\n{redact(failed, secrets.values())[:500]}"
        else:
            continue
        telegram.send(f"{text}\n{run_link(telegram, run.run_id)}", secrets, context.log)


HOST_CHECKS = (HOST_CONFORMS, HOST_SAFE_TO_DEPLOY, EXPOSURE)
GREEN = "green"


def host_check_states(instance: dg.DagsterInstance) -> dict[str, tuple[bool, str, str]]:
    """check name → (passed, its problems as the UI shows them, run id) of the latest evaluation of each host check."""
    out = {}
    for name in HOST_CHECKS:
        record = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey(HOST_ASSET), name))
        event = record.event.dagster_event if record and record.event else None
        evaluation = event.event_specific_data if event else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            continue  # planned, not evaluated yet
        meta = evaluation.metadata
        shown = meta.get("problems") or meta.get("outside_allow_list")
        out[name] = (evaluation.passed, str(getattr(shown, "value", shown or "")), record.run_id)
    return out


@dg.sensor(name=HOST_CHECK_NOTIFIER, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def host_check_notifier(context: dg.SensorEvaluationContext, telegram: TelegramNotifier,
                        secrets: SecretSource) -> dg.SkipReason:
    """Tells Telegram when a host check (OS/kernel/UFW conformance, free disk, wildcard publications) turns red, when
    its problems change, and when it is green again: once per change, not at every evaluation. The cursor holds what
    Telegram was last told per check; a message Telegram did not take is sent again at the next tick."""
    if HOST_CHECK not in telegram.events:
        return dg.SkipReason("host_check is not in notifications.telegram.on")
    told = json.loads(context.cursor) if context.cursor else {}
    sent = []
    for name, (passed, problems, run_id) in sorted(host_check_states(context.instance).items()):
        state = GREEN if passed else sha256_hex(problems)[:16]
        if told.get(name, GREEN) == state:
            continue
        head = f"✅ host check {name} is green again" if passed else f"⚠️ host check {name} is red"
        body = "" if passed else f"\n{redact(problems, secrets.values())[:800]}"
        if telegram.send(f"{head}{body}\n{run_link(telegram, run_id)}", secrets, context.log):
            told[name] = state
            sent.append(name)
    context.update_cursor(json.dumps(told, sort_keys=True))
    return dg.SkipReason(f"told Telegram about {', '.join(sent)}" if sent else "no host check changed")
