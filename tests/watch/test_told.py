"""What the check notifier tells, decided by watch/told.py from its cursor: once per change of state, a reminder
while red, one "flapping" message instead of a flood, nothing twice across restarts (the cursor, serialised as the
daemon stores it), and a message Telegram refused tried again."""

from __future__ import annotations

import json

from prodg_assets.watch.told import Evaluation, Policy, tell

POLICY = Policy(remind_s=6 * 3600, flap_changes=4, flap_window_s=3600)
T0 = 1_800_000_000.0


class Telegram:
    def __init__(self):
        self.sent: list[tuple[str, str]] = []
        self.down = False

    def __call__(self, kind: str, ev: Evaluation) -> bool:
        if self.down:
            return False
        self.sent.append((kind, ev.check))
        return True


def run(evaluations: list[tuple[float, bool, str]], ticks: list[float], telegram: Telegram, cursor: str = "") -> str:
    """The notifier ticking at `ticks` over one check evaluated at the given (time, passed, problems); each tick
    sees the newest evaluation made by then. The cursor goes through JSON as the daemon keeps it."""
    for now in ticks:
        seen = [e for e in evaluations if e[0] <= now]
        if not seen:
            continue
        at, passed, problems = seen[-1]
        ev = Evaluation("redis healthy", passed, problems, evaluations.index(seen[-1]) + 1, "run", at)
        cursor = json.dumps(tell(json.loads(cursor) if cursor else {}, [ev], now, POLICY, telegram))
    return cursor


def test_red_then_green_is_told_once_each_and_a_restart_resends_nothing():
    telegram = Telegram()
    evals = [(T0, True, "none"), (T0 + 300, False, "- not running: exited"), (T0 + 600, False, "- not running: exited"),
             (T0 + 900, True, "none")]
    cursor = run(evals, [T0 + 60 * i for i in range(0, 14)], telegram)
    assert telegram.sent == [("red", "redis healthy")]
    cursor = run(evals, [T0 + 960, T0 + 1020], telegram, cursor)
    assert telegram.sent == [("red", "redis healthy"), ("green", "redis healthy")]
    # the daemon restarted: the same cursor, the same evaluations, later ticks — nothing new to tell
    run(evals, [T0 + 1200, T0 + 4000], telegram, cursor)
    assert len(telegram.sent) == 2


def test_a_check_that_stays_red_is_reminded_every_remind_interval_and_a_new_problem_is_told():
    telegram = Telegram()
    evals = [(T0, False, "- unhealthy"), (T0 + 7 * 3600, False, "- not running")]
    run(evals, [T0 + 600 * i for i in range(0, 14 * 6 + 1)], telegram)  # 14 h of ticks every 10 min
    assert [k for k, _ in telegram.sent] == ["red", "reminder", "changed", "reminder"]


def test_a_flapping_check_is_told_once_until_it_settles():
    telegram = Telegram()
    evals = [(T0 + 300 * i, i % 2 == 1, "- flaps") for i in range(12)]  # red, green, red … every 5 min for 1 h
    cursor = run(evals, [T0 + 60 * i for i in range(0, 60)], telegram)
    kinds = [k for k, _ in telegram.sent]
    assert kinds == ["red", "green", "red", "flapping"], kinds
    # it stops flapping (green from then on): once the window passes without a flip, its settled state is told
    settled = evals + [(T0 + 3600, True, "none")]
    run(settled, [T0 + 3600 + 60 * i for i in range(0, 70)], telegram, cursor)
    assert [k for k, _ in telegram.sent] == ["red", "green", "red", "flapping", "settled"]


def test_a_message_telegram_did_not_take_is_sent_at_the_next_tick():
    telegram = Telegram()
    telegram.down = True
    evals = [(T0, False, "- unhealthy")]
    cursor = run(evals, [T0, T0 + 60], telegram)
    assert telegram.sent == []
    telegram.down = False
    run(evals, [T0 + 120, T0 + 180], telegram, cursor)
    assert telegram.sent == [("red", "redis healthy")]


def test_the_watching_doc_states_the_defaults_and_intervals_that_run():
    """docs/WATCHING.md's "What you are told, and when" gives the notifiers' ticks, and with docs/SETTINGS.md the watch
    defaults: keep them true."""
    import os

    import prodg_assets
    from prodg_assets.contract import BACKUP_MISSED_SENSOR, CHECK_NOTIFIER, DEPLOY_FAILURE_NOTIFIER
    from prodg_assets.settings import WatchSettings
    from tests.conftest import ROOT
    from tests.spec.conftest import BUNDLED_ENV

    readme = " ".join(" ".join(open(os.path.join(ROOT, "docs", name), encoding="utf-8").read().split())
                      for name in ("WATCHING.md", "SETTINGS.md"))
    defs = prodg_assets.build_defs({"PRODG_REPO": ROOT, **BUNDLED_ENV})
    tick = {name: defs.resolve_sensor_def(name).minimum_interval_seconds
            for name in (DEPLOY_FAILURE_NOTIFIER, CHECK_NOTIFIER, BACKUP_MISSED_SENSOR)}
    assert f"the next tick of `deploy_failure_notifier` ({tick[DEPLOY_FAILURE_NOTIFIER]} s)" in readme
    assert f"its family's interval + the notifier's tick ({tick[CHECK_NOTIFIER]} s)" in readme
    assert f"after 04:00 UTC (every {tick[BACKUP_MISSED_SENSOR] // 60} min;" in readme
    watch = WatchSettings()
    assert f"`watch.remind_every` ({watch.remind_every.replace('h', ' h')}) after the last message" in readme
    assert f"flapping ({watch.flapping_changes} changes within {watch.flapping_within.replace('h', ' h')})" in readme
    assert f"`{watch.backups_due_by}`" in readme or f'`"{watch.backups_due_by}"`' in readme
    every = ", ".join(f"{family} {interval}" for family, interval in WatchSettings.every)
    assert every in readme
