"""Restores and drills where production runs them: in a container of the production code image (Debian 12's
python3.11.2, whose tarfile has no extraction filters — restores there used to fail with TypeError), against the
bed's S3 stand-in; and the drill's scratch folders, which hold decrypted data: what a killed drill left is removed by
the next one. The operator's `--to` through a symlink planted in a writable folder is refused by the command."""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess

import dagster as dg
import pytest

from prodg_assets.contract import RESTORED
from prodg_assets.gitops.repo import ConfigRepo
from tests.backups.conftest import STORE_KEY_ID, STORE_SECRET
from tests.backups.test_restore_cli import cli_env
from tests.conftest import PRODG_CLI, ROOT
from tests.prod.test_production import build_images

pytestmark = pytest.mark.docker

DAY = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=3)).isoformat()

# In the image, as an operator and as the nightly drill would: `prodg restore configs`, then the `restored` check of
# the day (definitions and resources built from the environment as the code location builds them).
DRILL = r"""
import os, sys
import dagster as dg
from prodg_assets import build_resources, config_repo
from prodg_assets.backups.assets.definitions import backup_definitions
from prodg_assets.contract import RESTORED
from prodg_assets.settings import EnvSettings
env = EnvSettings.from_env(os.environ)
repo = config_repo(env)
state = repo.desired_state(repo.head())
defs = backup_definitions(state)
check = dg.AssetCheckKey(dg.AssetKey("config_backup"), RESTORED)
job = dg.define_asset_job("drill", selection=dg.AssetSelection.checks(check))
drill = dg.Definitions(assets=list(defs.assets), asset_checks=list(defs.asset_checks), jobs=[job],
                       resources=build_resources(state, env))
with dg.instance_for_test() as instance:
    result = drill.resolve_job_def("drill").execute_in_process(instance=instance, raise_on_error=False,
                                                               tags={"dagster/partition": sys.argv[1]})
(found,) = result.get_asset_check_evaluations()
print(f"drill passed={found.passed}:", found.metadata["verified"].value)
"""


def tree_sha256(folder: str) -> dict[str, str]:
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(root, name), "rb") as fh:
                found[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(fh.read()).hexdigest()
    return found


@pytest.fixture(scope="module")
def config_backed_up(bed):
    with dg.instance_for_test() as instance:
        assert bed.materialize(["config_backup"], DAY, instance).success
    return DAY


def test_a_restore_and_a_drill_pass_inside_the_production_code_image(bed, config_backed_up, docker_client, tmp_path):
    image = build_images()["DAGSTER_CODE_IMAGE"]
    restored, drill = tmp_path / "restored", tmp_path / "drill.py"
    drill.write_text(DRILL)
    script = f"prodg restore configs --date {DAY} --to {restored} --identity {bed.operator_identity_file} && " \
             f"python {drill} {DAY}"
    env = {**cli_env(bed), "PRODG_BACKUP_IDENTITY": bed.identity_file}
    env.pop("PATH"), env.pop("HOME")
    bed_root = os.path.dirname(bed.repo)  # the repo, the identities and the secrets file, at their own paths
    container = docker_client.containers.run(
        image, ["bash", "-c", script], detach=True, network_mode="host", environment=env,  # the stand-in: loopback
        volumes={bed_root: {"bind": bed_root, "mode": "rw"}, str(tmp_path): {"bind": str(tmp_path), "mode": "rw"},
                 "/var/run/docker.sock": {"bind": "/var/run/docker.sock", "mode": "rw"}})
    try:
        status = container.wait(timeout=300)["StatusCode"]
        log = container.logs().decode()
    finally:
        container.remove(force=True)
    assert status == 0, log
    assert f"identical to commit {bed.commit[:12]}" in log, log
    assert tree_sha256(str(restored / "config")) == tree_sha256(os.path.join(bed.repo, "config"))
    assert "drill passed=True:" in log and "files extracted" in log, log
    assert "TypeError" not in log


def test_a_killed_drills_decrypted_data_is_removed_by_the_next_drill(bed, config_backed_up):
    drills = os.path.join(ConfigRepo(repo_path=bed.repo).deployed_dir, ".drills")
    stale = os.path.join(drills, f"{DAY}-killed")  # as a drill killed mid-restore leaves it (no finally ran)
    os.makedirs(stale, exist_ok=True)
    with open(os.path.join(stale, "secrets.env"), "w") as fh:
        fh.write("POSTGRES_PASSWORD=left-by-a-killed-drill\n")
    with dg.instance_for_test() as instance:
        found = bed.run_check_results("config_backup", DAY, instance, RESTORED)
    assert found.passed, found.metadata["verified"].value
    assert os.listdir(drills) == []  # the stale folder and the drill's own
    assert oct(os.stat(drills).st_mode & 0o777) == oct(0o700)


def test_prodg_restore_to_a_path_through_a_planted_symlink_writes_nothing_there(bed, config_backed_up, tmp_path):
    shared, elsewhere = tmp_path / "shared", tmp_path / "elsewhere"
    shared.mkdir(mode=0o777)  # a folder others may write to
    elsewhere.mkdir()
    os.symlink(elsewhere, shared / "restore")  # planted: shared/restore -> elsewhere
    proc = subprocess.run([*PRODG_CLI, "restore", "configs", "--date", DAY, "--identity", bed.identity_file, "--to",
                           str(shared / "restore" / "config-tree")], env=cli_env(bed), capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{shared / 'restore'} is a symbolic link (to {elsewhere}); a restore never follows one" in proc.stderr
    assert os.listdir(elsewhere) == [] and os.listdir(shared) == ["restore"]
    assert STORE_SECRET not in proc.stderr and STORE_KEY_ID not in proc.stderr
