"""Retention by prefix: table-driven cases of the pure arithmetic, then the same rule applied to a real store."""

import datetime
from dataclasses import dataclass

import pytest

from prodg_assets.backups.store.keys import key_date
from prodg_assets.backups.store.retention import keys_to_delete, plan_retention

TODAY = datetime.date(2026, 11, 27)


@dataclass(frozen=True)
class Obj:
    key: str


def day(n: int) -> str:
    """The date n days before TODAY."""
    return (TODAY - datetime.timedelta(days=n)).isoformat()


def daily(prefix: str, first: int, last: int, name: str = "dump.sql.zst") -> list[str]:
    """One key per day, from `first` to `last` days ago."""
    return [f"{prefix}{day(n)}/{name}" for n in range(first, last + 1)]


FORTY = daily("postgres/", 1, 40) + daily("minio/", 1, 40, "manifest.json") + daily("configs/", 1, 40, "c.tar.zst")

CASES = [
    # (name, prefix, days, objects, marker, keep, expected deletions)
    ("30-day window over 40 daily partitions: the oldest 10 of that prefix, nothing else",
     "postgres/", 30, FORTY, None, (), daily("postgres/", 31, 40)),
    ("the same window on another prefix touches only that prefix",
     "configs/", 30, FORTY, None, (), daily("configs/", 31, 40, "c.tar.zst")),
    ("a 90-day window over 40 days deletes nothing",
     "configs/", 90, FORTY, None, (), []),
    ("the window's first day (today - days) is kept",
     "postgres/", 30, daily("postgres/", 29, 31), None, (), daily("postgres/", 31, 31)),
    ("the newest backup stays even when everything is older than the window",
     "postgres/", 30, daily("postgres/", 50, 60), None, (), daily("postgres/", 51, 60)),
    ("every object of the newest backup's day stays",
     "postgres/", 7, [f"postgres/{day(20)}/a.sql.zst", f"postgres/{day(20)}/b.sql.zst", f"postgres/{day(21)}/a"],
     None, (), [f"postgres/{day(21)}/a"]),
    ("a mirror day without its manifest is not a successful backup: the older complete day is the one kept",
     "minio/", 7, [f"minio/{day(20)}/b/k", f"minio/{day(21)}/b/k", f"minio/{day(21)}/manifest.json"],
     "manifest.json", (), [f"minio/{day(20)}/b/k"]),
    ("a mirror day's objects go with its manifest",
     "minio/", 30, [f"minio/{day(40)}/b/k", f"minio/{day(40)}/manifest.json", f"minio/{day(1)}/manifest.json"],
     "manifest.json", (), [f"minio/{day(40)}/b/k", f"minio/{day(40)}/manifest.json"]),
    ("keys without a partition date are never deleted",
     "postgres/", 1, ["postgres/README", "postgres/old/dump.sql", f"postgres/{day(1)}/x"], None, (), []),
    ("a prefix is matched as a prefix, not as a substring",
     "postgres/", 1, [f"old-postgres/{day(90)}/x", f"postgres/{day(90)}/x", f"postgres/{day(1)}/x"], None, (),
     [f"postgres/{day(90)}/x"]),
    ("explicitly kept keys stay",
     "postgres/", 1, [f"postgres/{day(9)}/x", f"postgres/{day(8)}/x", f"postgres/{day(1)}/x"], None,
     (f"postgres/{day(9)}/x",), [f"postgres/{day(8)}/x"]),
    ("no objects, nothing to do", "postgres/", 30, [], None, (), []),
    ("an impossible date in a key is not a date",
     "postgres/", 1, ["postgres/2026-02-30/x", f"postgres/{day(1)}/x"], None, (), []),
]


@pytest.mark.parametrize("name,prefix,days,keys,marker,keep,expected", CASES, ids=[c[0] for c in CASES])
def test_retention(name, prefix, days, keys, marker, keep, expected):
    assert keys_to_delete(prefix, days, TODAY, [Obj(k) for k in keys], marker, keep) == sorted(expected)


def test_plan_names_the_cutoff_the_kept_day_and_the_undated_keys():
    plan = plan_retention("postgres/", 30, TODAY, [Obj(k) for k in [*daily("postgres/", 35, 36), "postgres/x"]])
    assert plan.cutoff == TODAY - datetime.timedelta(days=30)
    assert plan.kept_newest == TODAY - datetime.timedelta(days=35)
    assert plan.delete == (f"postgres/{day(36)}/dump.sql.zst",)
    assert plan.undated == ("postgres/x",)


@pytest.mark.parametrize("prefix,days", [("postgres/", 0), ("postgres/", -3), ("", 30), ("postgres", 30)])
def test_nonsense_settings_are_refused(prefix, days):
    with pytest.raises(ValueError):
        plan_retention(prefix, days, TODAY, [])


def test_key_date():
    assert key_date("minio/2026-11-26/media/a.png", "minio/") == datetime.date(2026, 11, 26)
    assert key_date("minio/2026-11-26", "minio/") is None
    assert key_date("configs/2026-11-26/x", "minio/") is None


@pytest.mark.docker
def test_retention_on_the_store_deletes_exactly_the_oldest_ten_of_one_prefix(bed, clean_store):
    from prodg_assets.backups.store.retention import prune
    from prodg_assets.settings import BackupTarget

    today = datetime.datetime.now(datetime.timezone.utc).date()
    shift = today - TODAY  # the store's retention runs against the real today

    def moved(key: str) -> str:
        prefix, date, rest = key.split("/", 2)
        return f"{prefix}/{(datetime.date.fromisoformat(date) + shift).isoformat()}/{rest}"

    store = bed.store(delete_batch=4)  # several DeleteObjects calls
    for key in map(moved, FORTY):
        store.put_bytes(key, key.encode())
    before = {o.key for o in store.list()}
    assert len(before) == 120

    class Log:
        def info(self, *_):
            pass

        warning = info

    deleted = prune(store, BackupTarget("postgres", "pg_dumpall", "postgres/", 30, "postgres"), today, set(), Log())
    after = {o.key for o in store.list()}
    assert deleted == 10
    assert before - after == {moved(k) for k in daily("postgres/", 31, 40)}
    assert store.request_counts()["DeleteObjects"] == 3
