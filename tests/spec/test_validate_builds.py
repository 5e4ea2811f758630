"""Property: every config the validator accepts builds Definitions without raising — whatever `build_defs` would
reject (a backup timezone other than UTC, a cron that is not daily, a malformed drift schedule, …) is a located
validation error instead. The sections that shape definitions are varied with values an operator might write."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prodg_assets
from prodg_assets.desired import validate

from .conftest import BUNDLED_ENV, CONFIG, PRODG_REL, tree

# (values the validator accepts, values it must refuse) per varied field
FIELDS = {
    "timezone": (["UTC"], ["Europe/Kyiv", "utc", ""]),
    # accepted: daily, before watch.backups_due_by (04:00 UTC, the bundled default)
    "schedule": (["0 3 * * *", "30 1 * * *", "59 3 * * *"], ["*/15 * * * *", "0 3 * * 1", "61 3 * * *", "0 24 * * *",
                                                              "0 3 * *", "@daily", "x"]),
    "start_date": (["2026-11-01", "1999-01-01"], ["2026-02-30", "yesterday", ""]),
    "drift_schedule": (["*/15 * * * *", "0,30 2 * * *", "1-5 * * * 0", "*/5 1-3 * 1,6 *"],
                       ["*/0 * * * *", "0 3 32 * *", "@hourly", "* * * *", "a b c d e"]),
    "freshness_hours": ([26, 0.5], ["26"]),
    "retention_days": ([30, 1], [0, -5]),
    "compression": (["zstd", "gzip"], ["xz"]),
    "methods": ([("pg_dumpall", "s3_mirror", "config_archive"), ("pg_dumpall",), ("config_archive",)],
                [("config_archive", "config_archive")]),
}


@st.composite
def sections(draw, broken_field: bool) -> dict:
    """Every field valid (`broken_field` False), or every field valid but one, drawn from the values to refuse."""
    broken = draw(st.sampled_from(list(FIELDS))) if broken_field else None
    return {name: draw(st.sampled_from(bad if name == broken else good)) for name, (good, bad) in FIELDS.items()}


def _copy(tmp: str, chosen: dict) -> Path:
    root = Path(tmp) / "config"
    shutil.copytree(CONFIG, root)
    _write(root, chosen)
    return root


def _write(root: Path, s: dict) -> None:
    path = root / PRODG_REL
    data = yaml.safe_load(path.read_text())
    telegram = data["notifications"]["telegram"]
    telegram["on"] = telegram.pop(True)  # PyYAML reads the key `on:` as YAML 1.1's true; prodg's reader does not
    b = data["backups"]
    b.update(timezone=s["timezone"], schedule=s["schedule"], start_date=s["start_date"], compression=s["compression"],
             freshness_hours=s["freshness_hours"])
    services = {"pg_dumpall": "postgres", "s3_mirror": "minio", "config_archive": None}
    b["targets"] = {f"t{i}": {k: v for k, v in {"method": m, "service": services[m], "prefix": f"t{i}/",
                                                "retention_days": s["retention_days"]}.items() if v is not None}
                    for i, m in enumerate(s["methods"])}
    data.setdefault("deploy", {})["drift_schedule"] = s["drift_schedule"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(sections(broken_field=False))
def test_a_config_of_accepted_values_validates_and_builds_definitions(chosen: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy(tmp, chosen)
        assert validate(tree(root), BUNDLED_ENV) == []
        defs = prodg_assets.build_defs({"PRODG_REPO": tmp, **BUNDLED_ENV})  # must not raise
        defs.resolve_asset_graph()
        for schedule in defs.schedules or []:
            defs.resolve_schedule_def(schedule.name)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(sections(broken_field=True))
def test_a_config_with_one_refused_value_is_a_located_error_not_a_traceback(chosen: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        errors = validate(tree(_copy(tmp, chosen)), BUNDLED_ENV)
        assert errors
        assert all(e.file and e.line >= 1 and e.field for e in errors)


def test_what_build_defs_would_reject_is_a_located_error(tmp_path: Path) -> None:
    root = tmp_path / "config"
    shutil.copytree(CONFIG, root)
    _write(root, {"timezone": "Europe/Kyiv", "schedule": "0 3 * * 1", "start_date": "yesterday",
                  "drift_schedule": "*/0 * * * *", "freshness_hours": 26, "retention_days": 30,
                  "compression": "zstd", "methods": ("config_archive", "config_archive")})
    fields = {e.field: e.message for e in validate(tree(root), BUNDLED_ENV)}
    assert "must be UTC" in fields["backups.timezone"]
    assert "daily cron" in fields["backups.schedule"]
    assert "must be a date" in fields["backups.start_date"]
    assert "steps by 0" in fields["deploy.drift_schedule"]
    assert "only one target may use config_archive" in fields["backups.targets.t1.method"]
