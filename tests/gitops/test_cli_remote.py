"""Every CLI command works in both repo modes: with PRODG_REPO_URL the local mirror is bare (no work tree), and
`prodg plan` still plans the tracked branch's head — or `--commit` — of the remote."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from ..conftest import git, make_testbed

pytestmark = pytest.mark.docker


def test_plan_follows_a_remote_with_no_work_tree(tmp_path, docker_client):
    bed = make_testbed(str(tmp_path), docker_client, f"prodgc{uuid.uuid4().hex[:8]}")
    bare = str(tmp_path / "origin.git")
    subprocess.run(["git", "clone", "-q", "--bare", bed.repo, bare], check=True)
    first = git(bare, "rev-parse", "HEAD")
    env = {**os.environ, **bed.env, "PRODG_REPO": str(tmp_path / "mirror"), "PRODG_REPO_URL": bare}
    try:
        bed.edit("compose/docker-compose.yml", "      retries: 30\n", "      retries: 31\n")
        second = bed.commit("one more healthcheck retry")
        git(bed.repo, "push", "-q", bare, "HEAD:main")
        for args, commit in ((["plan"], second), (["plan", "--commit", first], first)):
            proc = subprocess.run([sys.executable, "-m", "prodg_assets.cli", *args], env=env, capture_output=True,
                                  text=True, timeout=300)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert "file not found" not in proc.stdout + proc.stderr
            for service in ("postgres", "redis", "hermes-api"):
                assert service in proc.stdout
            assert "nothing was applied" in proc.stdout
        assert (tmp_path / "mirror" / "HEAD").is_file() and not (tmp_path / "mirror" / "config").is_dir()  # bare
        assert second != first
    finally:
        bed.cleanup()
