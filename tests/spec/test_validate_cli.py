"""`prodg validate`: exit 0 when valid, 1 with one `file:line: field: message` line per error, never a traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from prodg_assets.cli import main

from .conftest import BUNDLED_ENV, COMPOSE_REL, PRODG_REL, REPO, edit

PRODG = [sys.executable, "-m", "prodg_assets.cli"]
ERROR_LINE = re.compile(r"^[^:]+:\d+: \S+: .+")


def prodg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "PRODG_CONFIG_DIR"}
    full_env.update({**BUNDLED_ENV, **(env or {})})
    return subprocess.run([*PRODG, *args], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=60)


def assert_no_traceback(result: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in result.stdout and "Traceback" not in result.stderr, result.stderr


def test_bundled_config_validates():
    result = prodg("validate", "config")
    assert_no_traceback(result)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "config: valid"


def test_default_config_folder_is_prodg_config_dir_then_config(tmp_path: Path):
    assert prodg("validate").returncode == 0  # ./config
    result = prodg("validate", env={"PRODG_CONFIG_DIR": str(tmp_path / "nowhere")})
    assert result.returncode == 1 and "not a folder" in result.stderr
    assert_no_traceback(result)


def test_corrupted_copy_exits_1_with_located_error_lines(config_copy: Path):
    edit(config_copy, COMPOSE_REL, "      - 127.0.0.1:5432:5432", "      - localhost:5432:5432")
    edit(config_copy, COMPOSE_REL, "depends_on: [loki]", "depends_on: [lokii]")
    edit(config_copy, PRODG_REL, "  prune: false", "  prune: maybe")
    result = prodg("validate", str(config_copy))
    assert_no_traceback(result)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert all(ERROR_LINE.match(line) for line in lines), lines
    assert any(line.endswith("services.postgres.ports[0]: host_ip must be an IP address, got 'localhost'")
               for line in lines)
    assert "3 error(s)" in result.stderr


def test_missing_folder_exits_1():
    result = prodg("validate", "no-such-config")
    assert_no_traceback(result)
    assert result.returncode == 1
    assert result.stdout == "" and "no-such-config: not a folder" in result.stderr


# In-process runs of main() for the hostile inputs: same code path as the console script, without a process each.
HOSTILE = {
    "garbage-bytes": (COMPOSE_REL, bytes(range(256)) * 4),
    "yaml-bomb": (COMPOSE_REL, b"a: &a [x, x, x, x, x, x, x, x, x, x]\n" + b"".join(
        b"a%d: &a%d [%s]\n" % (i, i, b", ".join([b"*a" if i == 1 else b"*a%d" % (i - 1)] * 10)) for i in range(1, 9))),
    "deep-nesting": (COMPOSE_REL, b"[" * 10_000),
    "a-list": (PRODG_REL, b"- 1\n- 2\n"),
    "empty-prodg": (PRODG_REL, b""),
    "unknown-tag": (COMPOSE_REL, b"services:\n  x: !weird value\n"),
    "control-char": (PRODG_REL, b"host:\n  hostname: a\x01b\n"),
    "wrong-section-type": (PRODG_REL, b"host: 1\nsecrets: 2\nbackups: 3\ndns: 4\n"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_input_gives_error_lines_not_tracebacks(config_copy: Path, capsys, name: str):
    rel, raw = HOSTILE[name]
    (config_copy / rel).write_bytes(raw)
    code = main(["validate", str(config_copy)])
    out, err = capsys.readouterr()
    assert code == 1
    assert out and all(ERROR_LINE.match(line) for line in out.splitlines()), out
    assert "Traceback" not in out + err


def test_console_script_is_installed_in_the_venv():
    # the scripts folder of the environment running the tests (a venv's bin/), wherever that environment is
    script = shutil.which("prodg", path=sysconfig.get_path("scripts"))
    assert script, "pip install -e . should install the `prodg` console script"
    result = subprocess.run([script, "validate", "config"], cwd=REPO, capture_output=True, text=True, timeout=60,
                            env={**os.environ, **BUNDLED_ENV})
    assert result.returncode == 0, result.stderr
