"""The package's layering holds: imports run one way (cli → layers, backups, watch → gitops → engine → desired →
settings, agekeys, listener → contract, lazy), and inside backups/ its rooms (assets → proofs → capture, restore →
store → format), as [tool.importlinter] in pyproject.toml states them. The contracts can fail: a copy of the package
with one forbidden import is refused, naming it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINT = os.path.join(os.path.dirname(sys.executable), "lint-imports")


def lint(folder: str) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--no-cache"], cwd=folder, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": folder})


def test_imports_run_one_way():
    proc = lint(ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "2 kept, 0 broken" in proc.stdout, proc.stdout[-2000:]


def test_a_capture_module_importing_a_restore_module_is_refused(tmp_path):
    shutil.copytree(os.path.join(ROOT, "prodg_assets"), tmp_path / "prodg_assets",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(os.path.join(ROOT, "pyproject.toml"), tmp_path / "pyproject.toml")
    mirror = tmp_path / "prodg_assets" / "backups" / "capture" / "mirror.py"
    mirror.write_text(mirror.read_text() + "\nfrom ..restore import commands  # noqa: E402,F401\n")
    proc = lint(str(tmp_path))
    assert proc.returncode != 0 and "backups' rooms BROKEN" in proc.stdout, proc.stdout[-3000:]
    assert "prodg_assets.backups.capture.mirror -> prodg_assets.backups.restore.commands" in proc.stdout, \
        proc.stdout[-3000:]
    assert "prodg's layers KEPT" in proc.stdout
