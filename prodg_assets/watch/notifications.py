"""Telegram notifications: a deploy failed, a backup succeeded or failed, a watched check changed state.

A notifier that cannot reach Telegram logs a warning and gives up: it never fails or delays a deploy.
"""

import json
import time
from typing import Mapping, Sequence

import dagster as dg

from ..contract import (
    BACKUP_FAILURE,
    BACKUP_FAILURE_NOTIFIER,
    BACKUP_KIND,
    BACKUP_SUCCESS,
    BACKUP_SUCCESS_NOTIFIER,
    CHECK,
    CHECK_NOTIFIER,
    CHECKS_KIND,
    COMMIT_TAG,
    DEPLOY_FAILURE,
    DEPLOY_FAILURE_NOTIFIER,
    DRIFT_KIND,
    DRILL_KIND,
    DRILL_NOTIFIER,
    KIND_TAG,
    PARTITION_TAG,
    RESTORED,
)
from ..secret_source import SecretSource, redact
from ..settings import TelegramSettings, WatchSettings
from .told import Evaluation, Policy, since_text, tell


class TelegramNotifier(dg.ConfigurableResource):
    """Telegram's Bot API at `api_base_url` (a local stand-in in tests). The bot token is read from the secrets
    source by name (`token_secret`), when a message is sent — it is never part of the run config."""

    api_base_url: str = "https://api.telegram.org"
    chat_id: str = ""
    token_secret: str = "TELEGRAM_BOT_TOKEN"
    ui_base_url: str = "http://127.0.0.1:3000"
    events: list[str] = list(TelegramSettings.on)  # prodg.yaml notifications.telegram.on (build_resources)
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
    if run.tags.get(KIND_TAG) in (BACKUP_KIND, DRIFT_KIND, CHECKS_KIND):
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
    return (f"{head}\nassets: {assets}\ncommit: {run.tags.get(COMMIT_TAG, '')[:12]}{tail}\n"
            f"{run_link(notifier, run.run_id)}")


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
                       if e.event_specific_data and e.event_specific_data.error) \
        or (context.failure_event.message or "")
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


def latest_evaluations(instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey],
                       secrets: Mapping[str, str]) -> list[Evaluation]:
    """The newest completed evaluation of each of `keys` (one storage query), its problems as the UI shows them,
    redacted."""
    out = []
    for key, summary in instance.event_log_storage.get_asset_check_summary_records(list(keys)).items():
        record = summary.last_completed_check_execution_record if summary else None
        evaluation = record.evaluation if record else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation):
            continue  # never evaluated, or its run crashed before it did
        meta = evaluation.metadata
        shown = meta.get("problems") or meta.get("outside_allow_list") or meta.get("drift")
        out.append(Evaluation(f"{key.asset_key.to_user_string()} {key.name}", evaluation.passed,
                              redact(str(getattr(shown, "value", shown or "")), secrets), record.id, record.run_id,
                              record.create_timestamp))
    return sorted(out, key=lambda e: e.check)


def check_message(kind: str, ev: Evaluation, since_s: float, policy: Policy, link: str) -> str:
    problems = f"\n{ev.problems[:800]}" if not ev.passed and ev.problems not in ("", "none") else ""
    head = {
        "red": f"⚠️ {ev.check} is red",
        "changed": f"⚠️ {ev.check} is still red, and what is wrong changed",
        "green": f"✅ {ev.check} is green again (after {since_text(since_s)})",
        "reminder": f"⏰ {ev.check} is still red (for {since_text(since_s)})",
        "flapping": f"🔁 {ev.check} is flapping: {policy.flap_changes} changes within "
                    f"{since_text(policy.flap_window_s)}; told again once it settles",
        "settled": f"{'✅' if ev.passed else '⚠️'} {ev.check} settled: {'green' if ev.passed else 'red'}",
    }[kind]
    return f"{head}{'' if kind in ('flapping', 'green') else problems}\n{link}"


def build_check_notifier(keys: Sequence[dg.AssetCheckKey], watch: WatchSettings) -> dg.SensorDefinition:
    """The sensor that tells Telegram about the watched checks (every family on a clock, and in_sync): once per
    change of state, a reminder while red, flapping told once (watch/told.py decides; the cursor remembers)."""
    policy = Policy(remind_s=watch.remind_minutes * 60, flap_changes=watch.flapping_changes,
                    flap_window_s=watch.flapping_minutes * 60)

    @dg.sensor(name=CHECK_NOTIFIER, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
    def check_notifier(context: dg.SensorEvaluationContext, telegram: TelegramNotifier,
                       secrets: SecretSource) -> dg.SkipReason:
        """Tells Telegram when a watched check turns red, changes while red, stays red (a reminder every
        watch.remind_every), flaps (once, until it settles) or turns green again. What was told lives in the
        cursor: a restarted daemon resends nothing; a message Telegram did not take is sent again at the next
        tick."""
        if CHECK not in telegram.events:
            return dg.SkipReason("check is not in notifications.telegram.on")
        values = secrets.values()
        told = json.loads(context.cursor) if context.cursor else {}
        now, sent = time.time(), []

        unreachable: list[bool] = []  # after one message Telegram did not take, the rest wait for the next tick

        def send(kind: str, ev: Evaluation) -> bool:
            if unreachable:
                return False
            rec = told.get(ev.check, {})
            since = now - (rec.get("since") or ev.at) if kind in ("green", "reminder") else 0.0
            ok = telegram.send(check_message(kind, ev, since, policy, run_link(telegram, ev.run_id)), secrets,
                               context.log)
            if ok:
                sent.append(f"{ev.check} ({kind})")
            else:
                unreachable.append(True)
            return ok

        told = tell(told, latest_evaluations(context.instance, keys, values), now, policy, send)
        context.update_cursor(json.dumps(told, sort_keys=True))
        return dg.SkipReason(f"told Telegram: {', '.join(sent)}" if sent else "nothing changed")

    return check_notifier
