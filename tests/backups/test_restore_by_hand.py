"""The restore an operator does without prodg (the host is gone): the block of docs/OPERATIONS.md run as written,
with curl (SigV4) against the store, sha256sum, the `age` CLI with the operator's identity, zstd and psql into an
empty Postgres container — the rows come back."""

import datetime
import os
import secrets
import shutil
import subprocess

import dagster as dg
import pytest

from prodg_assets.backups.capture.postgres import census
from prodg_assets.backups.restore.postgres import wait_ready
from prodg_assets.contract import POSTGRES_BACKUP
from tests.backups.conftest import (
    BUCKET,
    EXPECTED_ROWS,
    NAME,
    PG_IMAGE,
    STORE_KEY_ID,
    STORE_SECRET,
    TODAY,
    documented_block,
)

pytestmark = pytest.mark.docker

MARKER = "<!-- restore-without-prodg"


def test_the_documented_restore_without_prodg_brings_the_rows_back(bed, clean_store, tmp_path):
    day = (TODAY - datetime.timedelta(days=1)).isoformat()
    with dg.instance_for_test() as instance:
        assert bed.materialize([POSTGRES_BACKUP], day, instance).success
    target = bed.client.containers.run(PG_IMAGE, detach=True, name=f"{NAME}-by-hand", network_mode="none",
                                       environment={"POSTGRES_PASSWORD": secrets.token_urlsafe(12)},
                                       labels={"prodg.test": NAME})
    try:
        wait_ready(bed.client.api, target.name)
        shutil.copy(bed.operator_identity_file, tmp_path / "operator.agekey")
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "REGION": "us-east-1", "ENDPOINT": bed.store_url,
               "BUCKET": BUCKET, "B2_KEY_ID": STORE_KEY_ID, "B2_KEY_SECRET": STORE_SECRET, "DAY": day,
               "TARGET": target.name, **{k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}}
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", documented_block(MARKER)], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "dump.sql.zst.age: OK" in proc.stdout  # sha256sum -c against the manifest
        assert census(bed.client.api, target.name).rows == EXPECTED_ROWS
    finally:
        target.remove(force=True, v=True)
