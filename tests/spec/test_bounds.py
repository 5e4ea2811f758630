"""The bounds on work that could go on for ever are settings the validator checks (prodg.yaml `deploy:` and
`backups.stall_timeout_s`): a build context above `deploy.build_context_max_mb` is a located error found from the
files' sizes alone — validating a config whose context holds a 1 GiB file reads none of it (peak memory measured in
fresh processes, against the same config without it) — and a bound of 0 or less is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prodg_assets.desired import validate
from prodg_assets.settings import BackupSettings, DeploySettings

from .conftest import BUNDLED_ENV, COMPOSE_REL, PRODG_REL, REPO, edit, find, line_of, tree

PEAK = """if True:
    import json, sys
    from prodg_assets.desired import DirTree, validate
    errors = validate(DirTree(sys.argv[1], label="config"), json.loads(sys.argv[2]))
    with open("/proc/self/status") as fh:
        peak = next(int(line.split()[1]) // 1024 for line in fh if line.startswith("VmHWM:"))
    print(json.dumps({"errors": [str(e) for e in errors], "peak_mib": peak}))
"""


def validate_in_a_fresh_process(root: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", PEAK, str(root), json.dumps(BUNDLED_ENV)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_defaults_are_the_documented_ones():
    deploy, backups = DeploySettings(), BackupSettings()
    assert (deploy.build_timeout_s, deploy.pull_timeout_s, deploy.build_context_max_mb) == (1800, 600, 100)
    assert (deploy.health_timeout_s, backups.stall_timeout_s) == (120, 600)
    settings = " ".join((REPO / "docs" / "SETTINGS.md").read_text(encoding="utf-8").split())
    assert ("| `deploy.build_timeout_s`, `deploy.pull_timeout_s`, `deploy.build_context_max_mb` | "
            f"`{deploy.build_timeout_s:g}`, `{deploy.pull_timeout_s:g}`, `{deploy.build_context_max_mb:g}` |") \
        in settings
    assert f"| `backups.stall_timeout_s` | `{backups.stall_timeout_s:g}` |" in settings


def test_a_gigabyte_build_context_is_a_located_error_and_is_never_read(config_copy: Path):
    baseline = validate_in_a_fresh_process(config_copy)
    assert baseline["errors"] == []
    big = config_copy / "hermes-api" / "app" / "weights.bin"
    with open(big, "wb") as fh:  # sparse: 1 GiB of apparent size, nothing written to disk
        fh.truncate(1 << 30)
    try:
        found = validate_in_a_fresh_process(config_copy)
        compose = (config_copy / COMPOSE_REL).read_bytes()
        line = line_of(compose, "  hermes-api:", "context: ../hermes-api")
        files = sum(len(names) for _, _, names in os.walk(config_copy / "hermes-api"))
        assert found["errors"] == [
            f"config/{COMPOSE_REL}:{line}: services.hermes-api.build.context: build context 'hermes-api' is "
            f"1,073.7 MB in {files} files, above deploy.build_context_max_mb (100.0 MB): move what the image does "
            f"not need out of it, or raise the limit in prodg.yaml"]
        # its bytes were never read (hashing them would have held them in memory: a GiB)
        assert found["peak_mib"] - baseline["peak_mib"] < 64, (found["peak_mib"], baseline["peak_mib"])

        # the limit raised in prodg.yaml: the same context is accepted
        edit(config_copy, PRODG_REL, "  build_context_max_mb: 100\n", "  build_context_max_mb: 1100\n")
        assert validate(tree(config_copy), BUNDLED_ENV) == []
    finally:
        big.unlink()


@pytest.mark.parametrize("field", ["build_timeout_s", "pull_timeout_s", "health_timeout_s", "build_context_max_mb"])
def test_a_deploy_bound_of_zero_is_refused(config_copy: Path, field: str):
    text = (config_copy / PRODG_REL).read_text(encoding="utf-8")
    line = next(li for li in text.splitlines(keepends=True) if li.startswith(f"  {field}: "))
    edit(config_copy, PRODG_REL, line, f"  {field}: 0\n")
    error = find(validate(tree(config_copy), BUNDLED_ENV), f"deploy.{field}", "must be more than 0, got 0")
    assert error.line == line_of((config_copy / PRODG_REL).read_bytes(), "deploy:", f"{field}: 0")


def test_a_backup_stall_bound_of_zero_or_a_string_is_refused(config_copy: Path):
    line = next(li for li in (config_copy / PRODG_REL).read_text(encoding="utf-8").splitlines(keepends=True)
                if li.startswith("  stall_timeout_s: "))
    edit(config_copy, PRODG_REL, line, "  stall_timeout_s: -1\n")
    find(validate(tree(config_copy), BUNDLED_ENV), "backups.stall_timeout_s", "must be more than 0, got -1")
    edit(config_copy, PRODG_REL, "  stall_timeout_s: -1\n", "  stall_timeout_s: ten minutes\n")
    find(validate(tree(config_copy), BUNDLED_ENV), "backups.stall_timeout_s", "must be")
