"""Dagster's own database as a backup target (`method: dagster_storage`): the history of the production shape's
Postgres storage backed up like every other target, drilled, and put back by `prodg restore dagster` after the
database was lost — the UI's GraphQL then shows the same runs and materialisations as before."""

from __future__ import annotations

import dataclasses
import datetime
import os
import secrets as pysecrets
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest
import requests

from prodg_assets.desired import load_desired_state
from prodg_assets.desired.tree import DirTree
from prodg_assets.engine.exec import exec_run
from tests.backups.conftest import PG_IMAGE, STORE_KEY_ID, STORE_SECRET, git, make_bed
from tests.backups.test_restore_cli import cli_env
from tests.conftest import PRODG_CLI, ROOT
from tests.dagster_dev import stop
from tests.standins.process import free_port

pytestmark = pytest.mark.docker

TARGET = "    dagster: {method: dagster_storage, prefix: dagster/, retention_days: 90}\n"
HISTORY_DEFS = textwrap.dedent('''\
    import dagster as dg

    @dg.asset
    def deployed_service() -> None:
        """Stands for a deploy: what the history shows."""

    defs = dg.Definitions(assets=[deployed_service])
    ''')
RUNS = "{ runsOrError(limit: 200) { ... on Runs { results { runId status } } } }"
MATERIALISATIONS = ('{ assetOrError(assetKey: {path: ["deployed_service"]}) { ... on Asset { '
                    "assetMaterializations(limit: 200) { runId timestamp } } } }")


@pytest.fixture()
def dagster_postgres(docker_client):
    """Dagster's storage as docker/prod has it: a Postgres of its own (user and database `dagster`), here published
    on a loopback port the Engine picks. Yields (container, password, host port)."""
    name = f"prodg-test-dagster-pg-{pysecrets.token_hex(4)}"
    password = f"dagster-{pysecrets.token_hex(8)}"
    container = docker_client.containers.run(PG_IMAGE, detach=True, name=name, labels={"prodg.test": name},
                                             environment={"POSTGRES_USER": "dagster", "POSTGRES_DB": "dagster",
                                                          "POSTGRES_PASSWORD": password},
                                             ports={"5432/tcp": ("127.0.0.1", None)})
    try:
        for _ in range(300):
            container.reload()
            port = (container.attrs["NetworkSettings"]["Ports"].get("5432/tcp") or [{}])[0].get("HostPort")
            ready = container.exec_run(["pg_isready", "-q", "-h", "127.0.0.1", "-U", "dagster"], user="postgres")
            if port and ready.exit_code == 0:
                break
            time.sleep(0.3)
        else:
            raise AssertionError(f"{name} never became ready: {container.logs(tail=20)!r}")
        yield name, password, int(port)
    finally:
        container.remove(force=True, v=True)


def instance_home(path, password: str, port: int) -> str:
    home = os.path.join(path, "dagster_home")
    os.makedirs(home)
    with open(os.path.join(home, "dagster.yaml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            storage:
              postgres:
                postgres_db: {{hostname: 127.0.0.1, port: {port}, username: dagster, password: {password},
                               db_name: dagster, scheme: postgresql+psycopg2}}
            telemetry: {{enabled: false}}
            """))
    return home


class Webserver:
    """dagster-webserver over the instance in `home`: the UI's GraphQL API."""

    def __init__(self, path, home: str):
        self.path, self.home = path, home

    def __enter__(self) -> "Webserver":
        defs = os.path.join(self.path, "history_defs.py")
        with open(defs, "w") as fh:
            fh.write(HISTORY_DEFS)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(os.path.join(self.path, f"webserver-{port}.log"), "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
                                      "-f", defs], cwd=str(self.path), env={**os.environ, "DAGSTER_HOME": self.home},
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        for _ in range(600):
            try:
                if requests.get(f"{self.url}/server_info", timeout=5).ok:
                    return self
            except requests.ConnectionError:
                pass
            assert self.proc.poll() is None, f"the webserver ended: see {self.log.name}"
            time.sleep(0.2)
        raise AssertionError(f"the webserver never answered: see {self.log.name}")

    def __exit__(self, *exc) -> None:
        stop(self.proc)
        self.log.close()

    def gql(self, query: str) -> dict:
        body = requests.post(f"{self.url}/graphql", json={"query": query}, timeout=60).json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def history(self) -> tuple[dict[str, str], list[tuple[str, str]]]:
        """({run id: status}, [(run id, timestamp) of each materialisation of deployed_service])."""
        runs = {r["runId"]: r["status"] for r in self.gql(RUNS)["runsOrError"]["results"]}
        asset = self.gql(MATERIALISATIONS)["assetOrError"]
        return runs, sorted((m["runId"], m["timestamp"]) for m in asset.get("assetMaterializations") or [])


def dagster_bed(tmp, docker_client, pg_container, store_server, minio_server):
    """The backup bed with one more target: Dagster's own database."""
    os.makedirs(tmp)
    bed = make_bed(tmp, docker_client, pg_container, store_server.url, minio_server)
    config = os.path.join(bed.repo, "config", "prodg.yaml")
    with open(config) as fh:
        text = fh.read()
    with open(config, "w") as fh:
        fh.write(text.replace("  targets:\n", "  targets:\n" + TARGET, 1))
    git(bed.repo, "commit", "-qam", "back up Dagster's database")
    state = load_desired_state(DirTree(os.path.join(bed.repo, "config")), {})
    assert "dagster" in {t.name for t in state.settings.backup_targets}
    return dataclasses.replace(bed, state=state, commit=git(bed.repo, "rev-parse", "HEAD").strip())


def test_dagster_history_backed_up_drilled_and_restored_after_the_database_is_lost(
        tmp_path, docker_client, pg_container, store_server, minio_server, dagster_postgres):
    container, password, port = dagster_postgres
    bed = dagster_bed(str(tmp_path / "bed"), docker_client, pg_container, store_server, minio_server)
    home = instance_home(tmp_path, password, port)
    day = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()
    with dg.DagsterInstance.from_config(home) as instance:
        # some history: three deploys of a service, one of them failed
        @dg.asset(name="deployed_service")
        def deployed_service() -> None:
            pass

        @dg.asset(name="deployed_service")
        def failing() -> None:
            raise RuntimeError("the health gate failed")

        for asset in (deployed_service, deployed_service, failing):
            dg.materialize([asset], instance=instance, raise_on_error=False)
        with Webserver(tmp_path, home) as ui:
            runs_before, materialised_before = ui.history()
        assert sorted(runs_before.values()) == ["FAILURE", "SUCCESS", "SUCCESS"]
        assert len(materialised_before) == 2

        # the night's backup, run on this very instance, and its drill
        backup = bed.materialize(["dagster_backup"], day, instance)
        assert backup.success
        meta = backup.asset_materializations_for_node("dagster_backup")[0].metadata
        assert meta["runs"].value >= 4 and meta["events"].value > 0  # the three runs and the backup's own
        assert container in meta["database"].value
        drill = bed.run_check_results("dagster_backup", day, instance, "restored")
        assert drill.passed, drill.metadata["verified"].value
        assert "runs" in drill.metadata["verified"].value and "events" in drill.metadata["verified"].value
        backup_run = backup.run_id

    # the database is lost
    code, _, err = exec_run(docker_client.api, container, ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "dagster",
                                                           "-d", "postgres"], user="postgres",
                            stdin=b"drop database dagster with (force);\ncreate database dagster;\n")
    assert code == 0, err.decode()
    with dg.DagsterInstance.from_config(home) as emptied:
        assert emptied.get_runs() == []

    # the operator's restore, from the store alone: into Dagster's Postgres (over what it holds now: --force)
    env = {**cli_env(bed), "PRODG_TEST_STORE_KEY_ID": STORE_KEY_ID, "PRODG_TEST_STORE_SECRET": STORE_SECRET}
    proc = subprocess.run([*PRODG_CLI, "restore", "dagster", "--date", day, "--target", container, "--force",
                           "--identity", bed.operator_identity_file], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"into container {container}" in proc.stdout and password not in proc.stdout + proc.stderr

    with Webserver(tmp_path, home) as ui:
        runs_after, materialised_after = ui.history()
    assert {r: runs_after.get(r) for r in runs_before} == runs_before
    assert backup_run in runs_after  # the backup's own run, as it was when dumped
    assert materialised_after == materialised_before


def test_dagster_backup_on_sqlite_storage_fails_naming_the_shape(bed, clean_store, tmp_path, docker_client,
                                                               pg_container, store_server, minio_server):
    own = dagster_bed(str(tmp_path / "bed"), docker_client, pg_container, store_server, minio_server)
    day = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()
    with dg.instance_for_test() as instance:
        result = own.materialize(["dagster_backup"], day, instance, raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.message
    assert "not Postgres" in message and "docker/prod" in message, message
    assert not [o for o in own.store().list("dagster/")]  # nothing was uploaded
