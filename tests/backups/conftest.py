"""The backup test bed: a real Postgres container (prodg/postgres:bookworm, no network, known rows), two moto
servers (one standing in for MinIO, one for the off-site store), and a real git repo holding a config with a
`backups:` section. Everything is named with the test process's pid and removed at the end."""

import datetime
import os
import re
import subprocess
import textwrap
import time
import uuid
from dataclasses import dataclass

import boto3
import dagster as dg
import pytest

import docker
from prodg_assets.backups.assets.definitions import backup_definitions, build_backup_resources
from prodg_assets.backups.format.crypt import BackupIdentity
from prodg_assets.backups.format.signing import host_signer
from prodg_assets.backups.restore.postgres import wait_ready
from prodg_assets.backups.store.client import BackupStore
from prodg_assets.contract import LABEL_HELPER, RESTORED
from prodg_assets.desired import DirTree, load_desired_state
from prodg_assets.engine.client import DockerEngine
from prodg_assets.engine.exec import exec_run
from prodg_assets.gitops.repo import ConfigRepo
from prodg_assets.secret_source import SecretSource
from tests.conftest import ROOT, age_keygen, init_repo
from tests.standins.moto import MotoServer

PID = uuid.uuid4().hex[:8]  # this run's: names no other run on the Engine or store has
NAME = f"prodgbk{PID}"
PG_IMAGE = "prodg/postgres:bookworm"
SECRETS = {"POSTGRES_PASSWORD": f"pg-Backup-Secret-{PID}-5d1f", "MINIO_ROOT_PASSWORD": f"minio-Secret-{PID}-9a7c"}
STORE_KEY_ID = f"AKIDBACKUP{PID}"
STORE_SECRET = f"store-Secret-Key-{PID}-c0ffee"
BUCKET = f"prodg-offsite-{PID}"
TODAY = datetime.datetime.now(datetime.timezone.utc).date()
START = TODAY - datetime.timedelta(days=10)
# Known contents: the restore must reproduce them.
SEED_SQL = """
create database hermes;
create database infisical;
\\connect hermes
create table events (id serial primary key, note text not null);
insert into events (note) select 'event ' || i from generate_series(1, 2500) i;
create schema app;
create table app.users (id int primary key, name text);
insert into app.users values (1, 'ada'), (2, 'grace'), (3, 'linus');
\\connect infisical
create table secrets_meta (id int primary key, label text);
insert into secrets_meta select i, 'label-' || i from generate_series(1, 40) i;
\\connect postgres
create table marker (id int);
insert into marker values (42);
"""
EXPECTED_ROWS = {"hermes/app.users": 3, "hermes/public.events": 2500, "infisical/public.secrets_meta": 40,
                 "postgres/public.marker": 1}
MINIO_OBJECTS = {("media", "logo.png"): os.urandom(70_000), ("media", "videos/intro.mp4"): os.urandom(6 * 1024 * 1024),
                 ("uploads", "a/b/c.txt"): b"hello from minio\n", ("uploads", "empty"): b""}


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout.strip()


def psql(api, container: str, sql: str, db: str = "postgres") -> str:
    code, out, err = exec_run(api, container, ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U",
                                               "postgres", "-d", db], user="postgres", stdin=sql.encode())
    assert code == 0, err.decode()
    return out.decode().strip()


def s3(url: str, key_id: str = "testing", secret: str = "testing"):
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key_id,
                        aws_secret_access_key=secret)


@dataclass
class BackupBed:
    repo: str
    state: object
    commit: str
    pg: str
    store_url: str
    minio_url: str
    client: docker.DockerClient
    secrets_file: str
    identity_file: str  # the host's identity (restore drills)
    operator_identity_file: str  # the offline operator's (restores with the age CLI)
    recipients: dict  # name → age1… as prodg.yaml lists them

    def store(self, **overrides) -> BackupStore:
        # the host's identity signs the manifests this bed writes, and its key is the one the bed's readers trust
        settings = {"endpoint_url": self.store_url, "region": "us-east-1", "bucket": BUCKET,
                    "access_key_id": STORE_KEY_ID, "secret_access_key": STORE_SECRET, "part_size_mb": 5,
                    "identity_file": self.identity_file}
        return BackupStore(**{**settings, **overrides})

    def helpers(self) -> list:
        """The helper containers working on this bed's Postgres (another run on the same Engine has its own)."""
        return self.helpers_of(self.pg)

    def helpers_of(self, container: str) -> list:
        """The helper containers working on `container`."""
        return [c for c in self.client.containers.list(all=True, filters={"label": LABEL_HELPER})
                if c.labels[LABEL_HELPER].endswith(f" of {container}")]

    def resources(self) -> dict:
        return {
            "docker": DockerEngine(),
            "repo": ConfigRepo(repo_path=self.repo, config_subdir="config", branch="main"),
            "secrets": SecretSource(source="env_file", env_file=self.secrets_file),
            "backup_store": self.store(),
            "minio_source": build_backup_resources(self.state)["minio_source"],
            "backup_identity": BackupIdentity(identity_file=self.identity_file),
        }

    def definitions(self) -> tuple[list, list]:
        """(assets, checks) of the backups' slice."""
        defs = backup_definitions(self.state)
        return list(defs.assets or []), list(defs.asset_checks or [])

    def materialize(self, selection: list[str], partition: str, instance, run_config: dict | None = None,
                    raise_on_error: bool = True, commit: str | None = None, tags: dict | None = None,
                    late: bool = True, **resources) -> dg.ExecuteInProcessResult:
        """Materialise `selection` for `partition`. `late` (the default) tags the run prodg/capture-late=true, so a
        test may back up any day; the tests of the late rule itself pass late=False."""
        assets, checks = self.definitions()
        tags = {**({"prodg/capture-late": "true"} if late else {}), **(tags or {})}
        # as backup_job runs them: without the rotating drill's `restored` checks (tests run those on their own)
        restores = [k for c in checks for k in c.check_keys if k.name == RESTORED]
        return dg.materialize([*assets, *checks], resources={**self.resources(), **resources},
                              partition_key=partition, instance=instance,
                              tags={"prodg/kind": "backup", "prodg/commit": commit or self.commit, **(tags or {})},
                              selection=dg.AssetSelection.assets(*selection) - dg.AssetSelection.checks(*restores),
                              run_config=run_config, raise_on_error=raise_on_error)

    def run_check_results(self, asset: str, partition: str, instance, name: str, tags: dict | None = None):
        """One check of `asset` for one partition (no materialisation): its evaluation (passed, metadata)."""
        return self.run_check(asset, partition, instance, name, tags)[0]

    def run_check(self, asset: str, partition: str, instance, name: str, tags: dict | None = None):
        """(evaluation, run result) of one check of `asset` for one partition, the run tagged `tags` too."""
        assets, checks = self.definitions()
        key = dg.AssetCheckKey(dg.AssetKey(asset), name)
        job = dg.define_asset_job("one_check", selection=dg.AssetSelection.checks(key))
        defs = dg.Definitions(assets=assets, asset_checks=checks, jobs=[job], resources=self.resources())
        result = defs.resolve_job_def("one_check").execute_in_process(
            instance=instance, tags={"dagster/partition": partition, **(tags or {})}, raise_on_error=False)
        (evaluation,) = result.get_asset_check_evaluations()
        return evaluation, result

    def run_checks(self, asset: str, partition: str, instance) -> dict[str, bool]:
        """The checks of `asset` alone, for one partition (no materialisation): {check name: passed}."""
        return {name: e.passed for name, e in self.check_evaluations(asset, partition, instance).items()}

    def check_evaluations(self, asset: str, partition: str, instance) -> dict[str, dg.AssetCheckEvaluation]:
        """{check name: its evaluation (passed, metadata)} of `asset`'s checks, run alone for one partition."""
        assets, checks = self.definitions()
        job = dg.define_asset_job("checks_only", selection=dg.AssetSelection.checks_for_assets(asset))
        defs = dg.Definitions(assets=assets, asset_checks=checks, jobs=[job], resources=self.resources())
        result = defs.resolve_job_def("checks_only").execute_in_process(
            instance=instance, tags={"dagster/partition": partition}, raise_on_error=False)
        return {e.asset_check_key.name: e for e in result.get_asset_check_evaluations()}


def write_config(repo: str, store_url: str, minio_port: int, secrets_file: str, recipients: dict[str, str],
                 signers: dict[str, str] | None = None) -> None:
    """The bed's config; `signers`: the keys its readers trust besides the host's own (backups.signers)."""
    os.makedirs(os.path.join(repo, "config", "compose"), exist_ok=True)
    with open(os.path.join(repo, "config", "prodg.yaml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            # The backup test bed: Postgres and MinIO (a moto stand-in), the off-site store a second moto.
            compose_file: compose/docker-compose.yml
            variables:
              MINIO_ROOT_USER: minio-admin
            host:
              hostname: backup-testbed.local
              os: Debian
              min_free_disk_gb: 1
              public_ports: []
            secrets:
              source: env_file
              env_file: {secrets_file}
              required:
                POSTGRES_PASSWORD: {{used_by: [postgres], purpose: database authentication}}
                MINIO_ROOT_PASSWORD: {{used_by: [minio], purpose: MinIO root}}
            backups:
              bucket: {BUCKET}
              endpoint_url: {store_url}
              region: us-east-1
              access_key_id_env: PRODG_TEST_STORE_KEY_ID
              secret_access_key_env: PRODG_TEST_STORE_SECRET
              schedule: "0 3 * * *"
              timezone: UTC
              start_date: "{START.isoformat()}"
              compression: zstd
              freshness_hours: 26
              encryption:
                recipients: {{{", ".join(f"{k}: {v}" for k, v in recipients.items())}}}
              signers: {{{", ".join(f"{k}: {v}" for k, v in (signers or {}).items())}}}
              targets:
                postgres: {{method: pg_dumpall, service: postgres, prefix: postgres/, retention_days: 30}}
                minio: {{method: s3_mirror, service: minio, prefix: minio/, retention_days: 30}}
                configs: {{method: config_archive, prefix: configs/, retention_days: 90}}
            """))
    with open(os.path.join(repo, "config", "compose", "docker-compose.yml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            name: {NAME}
            networks:
              internal:
                name: {NAME}_internal
            services:
              postgres:
                image: {PG_IMAGE}
                container_name: {NAME}-postgres
                environment:
                  POSTGRES_USER: postgres
                  POSTGRES_PASSWORD: ${{POSTGRES_PASSWORD}}
                x-prodg: {{layer: data_stores, backup: postgres}}
              minio:
                image: minio/minio:latest
                container_name: {NAME}-minio
                environment:
                  MINIO_ROOT_USER: ${{MINIO_ROOT_USER}}
                  MINIO_ROOT_PASSWORD: ${{MINIO_ROOT_PASSWORD}}
                ports: ["127.0.0.1:{minio_port}:9000"]
                x-prodg: {{layer: data_stores, backup: minio}}
            """))


@pytest.fixture(scope="session")
def pg_container(docker_client):
    """A Postgres with known rows, reachable only through exec."""
    name = f"{NAME}-postgres"
    try:
        docker_client.containers.get(name).remove(force=True, v=True)
    except docker.errors.NotFound:
        pass
    container = docker_client.containers.run(PG_IMAGE, detach=True, name=name, network_mode="none",
                                             environment={"POSTGRES_PASSWORD": SECRETS["POSTGRES_PASSWORD"]},
                                             labels={"prodg.test": NAME})
    try:
        wait_ready(docker_client.api, name)
        psql(docker_client.api, name, SEED_SQL)
        yield name
    finally:
        container.remove(force=True, v=True)


@pytest.fixture(scope="session")
def store_server():
    """The off-site store: moto checking every request's key and SigV4 signature (only STORE_KEY_ID / STORE_SECRET
    are known to it), as B2 does."""
    with MotoServer(keys={STORE_KEY_ID: STORE_SECRET}) as server:
        s3(server.url, STORE_KEY_ID, STORE_SECRET).create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="session")
def minio_server():
    with MotoServer() as server:
        client = s3(server.url)
        for bucket in sorted({b for b, _ in MINIO_OBJECTS}):
            client.create_bucket(Bucket=bucket)
        for (bucket, key), data in MINIO_OBJECTS.items():
            client.put_object(Bucket=bucket, Key=key, Body=data)
        yield server


def secrets_and_keys(tmp: str, secrets: dict[str, str]) -> tuple[str, str, str, dict[str, str]]:
    """A bed's secrets file (mode 600) and both age identities: (secrets file, host identity, operator identity,
    recipients as prodg.yaml lists them)."""
    secrets_file = os.path.join(tmp, "secrets.env")
    with open(secrets_file, "w") as fh:
        fh.write("".join(f"{k}={v}\n" for k, v in secrets.items()))
    os.chmod(secrets_file, 0o600)
    host_identity, operator_identity = os.path.join(tmp, "host.agekey"), os.path.join(tmp, "operator.agekey")
    recipients = {"operator": age_keygen(operator_identity), "host": age_keygen(host_identity)}
    return secrets_file, host_identity, operator_identity, recipients


def make_bed(tmp: str, docker_client, pg_container: str, store_url: str, minio_server) -> BackupBed:
    """A config repo whose off-site store is `store_url` (bucket BUCKET, keys STORE_KEY_ID / STORE_SECRET), its
    MinIO `minio_server`, and both age identities."""
    repo = os.path.join(tmp, "repo")
    secrets_file, host_identity, operator_identity, recipients = secrets_and_keys(tmp, SECRETS)
    # the host's key listed, as an operator restoring with their own identity (no host identity) needs it
    write_config(repo, store_url, minio_server.port, secrets_file, recipients,
                 {"host": host_signer(host_identity).text})
    commit = init_repo(repo, "backup test bed")
    state = load_desired_state(DirTree(os.path.join(repo, "config")), {})
    return BackupBed(repo, state, commit, pg_container, store_url, minio_server.url,
                     docker_client, secrets_file, host_identity, operator_identity, recipients)


@pytest.fixture(scope="session")
def bed(tmp_path_factory, docker_client, pg_container, store_server, minio_server) -> BackupBed:
    return make_bed(str(tmp_path_factory.mktemp("backups")), docker_client, pg_container, store_server.url,
                    minio_server)


@pytest.fixture()
def clean_store(bed):
    """The off-site bucket, emptied before the test (objects and uploads in progress)."""
    store = bed.store()
    for upload in store.multipart_uploads():
        store.client.abort_multipart_upload(Bucket=BUCKET, Key=upload.key, UploadId=upload.upload_id)
    store.delete_objects([o.key for o in store.list()])
    return store


def expected_requests(store: BackupStore, listings: int, manifests: int, objects: int) -> dict:
    """The S3 requests of an audit reading `manifests` manifests that name `objects` objects: the listings and a GET
    per manifest; plus a HEAD per object where the store's listing carries no ETags (s3s-fs)."""
    expected = {"ListObjectsV2": listings, "GetObject": manifests}
    if not any(o.etag for o in store.list()):
        expected["HeadObject"] = objects
    return expected


def age_decrypt(data: bytes, identity_file: str) -> bytes:
    """`data` decrypted by the plain `age` CLI (what an operator without prodg runs); raises on failure."""
    proc = subprocess.run(["age", "--decrypt", "-i", identity_file], input=data, capture_output=True)
    if proc.returncode != 0:
        raise AssertionError(f"age --decrypt failed: {proc.stderr.decode()[-300:]}")
    return proc.stdout


def wait_for(predicate, timeout_s: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def documented_block(marker: str) -> str:
    """The shell block of docs/OPERATIONS.md under the comment that starts with `marker` (the suite runs it as
    written)."""
    with open(os.path.join(ROOT, "docs", "OPERATIONS.md"), encoding="utf-8") as fh:
        text = fh.read()
    match = re.search(re.escape(marker) + r".*?-->\n```sh\n(.*?)```", text, re.S)
    assert match, f"docs/OPERATIONS.md has no block marked {marker}"
    return match.group(1)
