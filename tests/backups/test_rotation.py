"""The nightly restore drill's rotation: which target and which day each night restores, and the schedule that
launches it (its run request: one partition, one target's `restored` check)."""

import datetime

import dagster as dg

from prodg_assets.backups.assets.rotation import drill_for_night
from prodg_assets.contract import DRILL_SCHEDULE, RESTORED
from prodg_assets.settings import BackupTarget
from tests.spec.conftest import BUNDLED_ENV

FIRST = datetime.date(2026, 1, 1)
TARGETS = [BackupTarget("postgres", "pg_dumpall", "postgres/", 30, "postgres"),
           BackupTarget("redis", "volume", "redis/", 14, "redis", "redis_bgsave", "/data"),
           BackupTarget("secrets", "secrets_file", "secrets/", 90),
           BackupTarget("configs", "config_archive", "configs/", 90)]


def test_over_time_every_target_is_drilled_at_every_age_of_its_window():
    ages: dict[str, set[int]] = {t.name: set() for t in TARGETS}
    night = FIRST
    for _ in range(len(TARGETS) * 90 + 400):  # a target's turn comes every 4th night: 90 turns cover 90 days
        night += datetime.timedelta(days=1)
        picked = drill_for_night(TARGETS, FIRST, night)
        assert picked is not None
        target, day = picked
        age = (night - day).days
        assert 1 <= age <= target.retention_days and day >= FIRST, (night, target.name, day)
        ages[target.name].add(age)
    for target in TARGETS:
        assert ages[target.name] == set(range(1, target.retention_days + 1)), target.name


def test_consecutive_nights_drill_different_targets_and_nothing_before_the_first_backup():
    assert drill_for_night(TARGETS, FIRST, FIRST) is None  # no day is over yet
    picks = [drill_for_night(TARGETS, FIRST, FIRST + datetime.timedelta(days=n))[0].name for n in range(1, 9)]
    assert all(a != b for a, b in zip(picks, picks[1:])) and set(picks) == {t.name for t in TARGETS}
    # early on the window is short: only days since the first backup
    target, day = drill_for_night(TARGETS, FIRST, FIRST + datetime.timedelta(days=2))
    assert FIRST <= day < FIRST + datetime.timedelta(days=2)


def test_the_schedule_requests_one_partition_of_one_targets_restored_check():
    import prodg_assets
    from prodg_assets.settings import EnvSettings

    state, _ = prodg_assets.graph_state(EnvSettings.from_env({}), BUNDLED_ENV)  # the state build_defs reads
    defs = prodg_assets.build_defs(BUNDLED_ENV)
    schedule = defs.resolve_schedule_def(DRILL_SCHEDULE)
    night = datetime.datetime(2026, 12, 20, 5, 0, tzinfo=datetime.timezone.utc)
    # no instance: the schedule reads none, and an instance closed here would stay behind in Dagster's load context
    context = dg.build_schedule_context(scheduled_execution_time=night, repository_def=defs.get_repository_def())
    data = schedule.evaluate_tick(context)
    (request,) = data.run_requests
    target, day = drill_for_night(state.settings.backup_targets, state.settings.backups.first_day, night.date())
    assert request.tags["dagster/partition"] == day.isoformat() and request.tags["prodg/drill-target"] == target.name
    assert request.asset_check_keys == [dg.AssetCheckKey(dg.AssetKey(target.asset), RESTORED)]
    assert not request.asset_selection  # nothing is backed up by the drill, only restored
