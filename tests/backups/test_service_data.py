"""Every stateful service's data in the backups: Redis (BGSAVE), a SQLite-backed service (the stand-in for Vaultwarden,
Headscale and Grafana, writing while it is backed up), a folder of files (Caddy's certificates), and the secrets file
— each backed up on the real Engine into the off-site store (moto), encrypted, and brought back with
`prodg restore <target> --date D`, then compared with what was captured."""

import datetime
import hashlib
import json
import os
import stat
import subprocess
import textwrap
import time
import uuid

import dagster as dg
import pytest

import docker
from prodg_assets.backups.format.signing import host_signer
from prodg_assets.backups.restore.files import file_sha256
from prodg_assets.contract import DRILL_KIND, KIND_TAG, RESTORED
from prodg_assets.desired import DirTree, load_desired_state
from prodg_assets.engine.exec import exec_run
from prodg_assets.gitops.repo import ConfigRepo
from prodg_assets.secret_source import SecretSource
from prodg_assets.watch.notifications import TelegramNotifier, restore_drill_notifier
from tests.backups.conftest import BUCKET, START, STORE_KEY_ID, STORE_SECRET, BackupBed, secrets_and_keys
from tests.conftest import PRODG_CLI, ROOT, init_repo
from tests.standins.telegram import TelegramStandIn

pytestmark = pytest.mark.docker

PID = uuid.uuid4().hex[:8]  # this run's: names no other run on the Engine or store has
NAME = f"prodgsd{PID}"
REDIS_IMAGE = "prodg/redis:bookworm"
SQLITE_IMAGE = "prodg/sqlite-app:bookworm"
FILES_IMAGE = "prodg/base:bookworm"
SECRETS = {"REDIS_PASSWORD": f"redis-Data-Secret-{PID}-77ab", "INFISICAL_ENCRYPTION_KEY": f"infisical-{PID}-0f0f1e2d"}
REDIS_KEYS = 1000
SERVICE_UID = 472
SEED_ROWS = 3000
TOKEN = "4242:drill-notify-Token"
DAY = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()


def write_config(repo: str, data: str, store_url: str, secrets_file: str, recipients: dict[str, str],
                 signer: str) -> None:
    os.makedirs(os.path.join(repo, "config", "compose"), exist_ok=True)
    with open(os.path.join(repo, "config", "prodg.yaml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            # Service data: Redis, a SQLite service, a folder of files, and the secrets file.
            compose_file: compose/docker-compose.yml
            host: {{hostname: data-testbed.local, os: Debian, min_free_disk_gb: 1, public_ports: [],
                    bind_roots: ["{data}"]}}
            secrets:
              source: env_file
              env_file: {secrets_file}
              required:
                REDIS_PASSWORD: {{used_by: [redis], purpose: Redis authentication}}
                INFISICAL_ENCRYPTION_KEY: {{used_by: [], purpose: decrypts Infisical's rows}}
            backups:
              bucket: {BUCKET}
              endpoint_url: {store_url}
              region: us-east-1
              access_key_id_env: PRODG_TEST_STORE_KEY_ID
              secret_access_key_env: PRODG_TEST_STORE_SECRET
              start_date: "{START.isoformat()}"
              encryption:
                recipients: {{{", ".join(f"{k}: {v}" for k, v in recipients.items())}}}
              signers: {{host: {signer}}} # the operator's restores (no host identity) trust the host's manifests
              targets:
                redis: {{method: volume, service: redis, capture: redis_bgsave, prefix: sd{PID}/redis/,
                         retention_days: 14}}
                vaultwarden: {{method: volume, service: vaultwarden, capture: sqlite, path: /data,
                               prefix: sd{PID}/vaultwarden/, retention_days: 30}}
                caddy: {{method: volume, service: caddy, capture: files, path: /data, prefix: sd{PID}/caddy/,
                         retention_days: 30}}
                secrets: {{method: secrets_file, prefix: sd{PID}/secrets/, retention_days: 90}}
            """))
    with open(os.path.join(repo, "config", "compose", "docker-compose.yml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            name: {NAME}
            networks:
              internal:
                name: {NAME}_internal
            services:
              redis:
                image: {REDIS_IMAGE}
                container_name: {NAME}-redis
                command: [sh, -c, 'exec redis-server --appendonly yes --requirepass "$$REDIS_PASSWORD"']
                environment: {{REDIS_PASSWORD: "${{REDIS_PASSWORD}}"}}
                volumes: ["{data}/redis:/data"]
                x-prodg: {{layer: data_stores}}
              vaultwarden:
                image: {SQLITE_IMAGE}
                container_name: {NAME}-vaultwarden
                # not root, as Grafana's image runs (472): the capture must read what the service can
                user: "{SERVICE_UID}:{SERVICE_UID}"
                environment: {{SQLITE_APP_DB: /data/db.sqlite3, SQLITE_APP_SEED_ROWS: "{SEED_ROWS}"}}
                volumes: ["{data}/vaultwarden:/data"]
                x-prodg: {{layer: data_stores}}
              caddy:
                image: {FILES_IMAGE}
                container_name: {NAME}-caddy
                command: [sleep, infinity]
                volumes: ["{data}/caddy:/data"]
                x-prodg: {{layer: tls}}
            """))


@pytest.fixture(scope="module")
def sbed(tmp_path_factory, docker_client, store_server):
    """The services running on bind mounts under the bed's data folder, with known data in each."""
    tmp = str(tmp_path_factory.mktemp("service-data"))
    data = os.path.join(tmp, "data")
    repo = os.path.join(tmp, "repo")
    secrets_file, host_identity, operator_identity, recipients = secrets_and_keys(tmp, SECRETS)
    write_config(repo, data, store_server.url, secrets_file, recipients, host_signer(host_identity).text)
    commit = init_repo(repo, "service data test bed")
    state = load_desired_state(DirTree(os.path.join(repo, "config")), {})
    bed = BackupBed(repo, state, commit, "", store_server.url, "", docker_client, secrets_file, host_identity,
                    operator_identity, recipients)
    # Caddy's folder: certificates and the ACME account, nested, as Caddy lays them out
    certs = os.path.join(data, "caddy", "caddy", "certificates", "acme-v02", "example.test")
    os.makedirs(certs)
    for name, size in (("example.test.crt", 3000), ("example.test.key", 227), ("example.test.json", 140)):
        with open(os.path.join(certs, name), "wb") as fh:
            fh.write(os.urandom(size))
    os.makedirs(os.path.join(data, "caddy", "caddy", "acme", "acme-v02", "users", "ops"))
    with open(os.path.join(data, "caddy", "caddy", "acme", "acme-v02", "users", "ops", "ops.key"), "wb") as fh:
        fh.write(os.urandom(121))
    containers = []
    try:
        for spec in state.services.values():
            mounts = [f"{m.source}:{m.target}" for m in spec.volumes]
            for m in spec.volumes:
                os.makedirs(m.source, exist_ok=True)
                if spec.user:
                    os.chown(m.source, SERVICE_UID, SERVICE_UID)
            env = {k: (SECRETS["REDIS_PASSWORD"] if v == "${REDIS_PASSWORD}" else v) for k, v in spec.environment}
            containers.append(docker_client.containers.run(
                spec.image, list(spec.command) if spec.command else None, name=spec.container_name, detach=True,
                user=spec.user or "",
                network_mode="none", volumes=mounts, environment=env, labels={"prodg.test": NAME}))
        redis_cli(docker_client, bed, "PING")
        pipe = "".join(f"SET key:{i} value-{i}-{'x' * (i % 50)}\n" for i in range(REDIS_KEYS))
        code, out, err = exec_run(docker_client.api, f"{NAME}-redis", ["redis-cli", "--no-auth-warning"],
                                  environment={"REDISCLI_AUTH": SECRETS["REDIS_PASSWORD"]}, stdin=pipe.encode())
        assert code == 0, err
        wait(lambda: sqlite_check(docker_client, f"{NAME}-vaultwarden")["rows"] >= SEED_ROWS, "the SQLite seed")
        yield bed
    finally:
        for c in containers:
            c.remove(force=True, v=True)
        # files the containers wrote as root under tmp: removed here, not left to pytest's tmp cleanup
        subprocess.run(["rm", "-rf", data], check=False)


def redis_cli(client, bed, *args: str, container: str = "") -> str:
    code, out, err = exec_run(client.api, container or f"{NAME}-redis", ["redis-cli", "--no-auth-warning", *args],
                              environment={"REDISCLI_AUTH": SECRETS["REDIS_PASSWORD"]})
    assert code == 0, err
    return out.decode().strip()


def sqlite_check(client, container: str) -> dict:
    code, out, err = exec_run(client.api, container, ["wget", "-qO-", "http://127.0.0.1:8080/check"])
    assert code == 0, (out, err)
    return json.loads(out)


def wait(probe, what: str, attempts: int = 300):
    for _ in range(attempts):
        try:
            if probe():
                return
        except (AssertionError, ValueError, docker.errors.APIError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting for {what}")


def cli(bed: BackupBed, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "PRODG_REPO": bed.repo,
           "PRODG_TEST_STORE_KEY_ID": STORE_KEY_ID, "PRODG_TEST_STORE_SECRET": STORE_SECRET}
    return subprocess.run([*PRODG_CLI, *args], env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def backed_up(bed: BackupBed, asset: str) -> dict:
    with dg.instance_for_test() as instance:
        result = bed.materialize([asset], DAY, instance)
        assert result.success
        event = result.get_asset_materialization_events()[0].materialization
        return {k: v.value for k, v in event.metadata.items()}


def stored(bed: BackupBed, key: str) -> bytes:
    return bed.store().client.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def tree_hashes(folder: str) -> dict[str, str]:
    return {os.path.relpath(os.path.join(root, n), folder): file_sha256(os.path.join(root, n))
            for root, _, names in os.walk(folder) for n in names}


def test_redis_is_snapshotted_by_bgsave_and_restores_every_key(sbed, tmp_path, docker_client):
    meta = backed_up(sbed, "redis_backup")
    assert meta["capture"] == "redis_bgsave" and "dump.rdb (after BGSAVE)" in meta["captured"]
    blob = stored(sbed, meta["object_key"])
    assert blob.startswith(b"age-encryption.org/v1") and hashlib.sha256(blob).hexdigest() == meta["sha256"]
    assert b"REDIS" not in blob and b"value-1" not in blob

    # into the live service's folder while it runs: refused, nothing touched
    live = cli(sbed, "restore", "redis", "--date", DAY, "--identity", sbed.operator_identity_file)
    assert live.returncode == 1 and f"container {NAME}-redis is running" in live.stderr, live.stderr

    target = str(tmp_path / "redis-restored")
    done = cli(sbed, "restore", "redis", "--date", DAY, "--to", target, "--identity", sbed.operator_identity_file)
    assert done.returncode == 0, done.stderr
    # the RDB captured (no half-written append-only file), and made the base of a new append-only log
    assert sorted(tree_hashes(target)) == ["appendonlydir/appendonly.aof.1.base.rdb",
                                           "appendonlydir/appendonly.aof.1.incr.aof",
                                           "appendonlydir/appendonly.aof.manifest", "dump.rdb"], os.listdir(target)
    restored = f"{NAME}-redis-restored"
    try:
        # a Redis with the service's own settings (append-only on) started on the restored folder
        docker_client.containers.run(REDIS_IMAGE, ["redis-server", "--appendonly", "yes", "--requirepass",
                                                   SECRETS["REDIS_PASSWORD"]], name=restored, detach=True,
                                     network_mode="none", volumes=[f"{target}:/data"],
                                     labels={"prodg.test": NAME})
        wait(lambda: redis_cli(docker_client, sbed, "PING", container=restored) == "PONG", "the restored Redis")
        assert redis_cli(docker_client, sbed, "DBSIZE", container=restored) == str(REDIS_KEYS)
        assert redis_cli(docker_client, sbed, "GET", "key:777", container=restored) == f"value-777-{'x' * 27}"
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", restored], capture_output=True)
        subprocess.run(["rm", "-rf", target], check=False)


def test_a_sqlite_service_is_backed_up_while_it_writes_and_the_copy_is_whole(sbed, tmp_path, docker_client):
    before = sqlite_check(docker_client, f"{NAME}-vaultwarden")["rows"]
    meta = backed_up(sbed, "vaultwarden_backup")
    after = sqlite_check(docker_client, f"{NAME}-vaultwarden")["rows"]
    assert after > before  # the service kept writing around the backup
    assert stored(sbed, meta["object_key"]).startswith(b"age-encryption.org/v1")
    assert not sbed.helpers_of(f"{NAME}-vaultwarden")  # the helper container is gone

    target = str(tmp_path / "vault-restored")
    done = cli(sbed, "restore", "vaultwarden", "--date", DAY, "--to", target, "--identity", sbed.identity_file)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(target)) == ["db.sqlite3"]  # no -wal/-shm: the online backup is one whole file
    probe = f"{NAME}-vault-probe"
    try:
        # the service-level probe: the same image, read-only, on the restored copy
        docker_client.containers.run(SQLITE_IMAGE, name=probe, detach=True, network_mode="none",
                                     volumes=[f"{target}:/data:ro"], labels={"prodg.test": NAME},
                                     environment={"SQLITE_APP_DB": "/data/db.sqlite3", "SQLITE_APP_READONLY": "1"})
        wait(lambda: sqlite_check(docker_client, probe), "the restored copy's probe")
        check = sqlite_check(docker_client, probe)
        assert check["integrity"] == "ok", check
        assert before <= check["rows"] <= after and check["rows"] == check["max_id"], (before, check, after)
    finally:
        subprocess.run(["docker", "rm", "-f", "-v", probe], capture_output=True)
        subprocess.run(["rm", "-rf", target], check=False)


def test_caddys_folder_restores_file_for_file_and_existing_data_is_moved_aside_only_with_force(sbed, tmp_path):
    meta = backed_up(sbed, "caddy_backup")
    source = os.path.join(os.path.dirname(sbed.repo), "data", "caddy")
    target = str(tmp_path / "caddy-restored")
    done = cli(sbed, "restore", "caddy", "--date", DAY, "--to", target, "--identity", sbed.identity_file)
    assert done.returncode == 0, done.stderr
    assert tree_hashes(target) == tree_hashes(source) and len(tree_hashes(source)) == 4
    assert meta["files"] == 4 and meta["raw_bytes"] > 3000  # each file's sha256 is in the manifest

    again = cli(sbed, "restore", "caddy", "--date", DAY, "--to", target, "--identity", sbed.identity_file)
    assert again.returncode == 1 and "already holds data" in again.stderr
    forced = cli(sbed, "restore", "caddy", "--date", DAY, "--to", target, "--force", "--identity",
                 sbed.identity_file)
    assert forced.returncode == 0, forced.stderr
    aside = [p for p in os.listdir(tmp_path) if p.startswith("caddy-restored.replaced-")]
    assert len(aside) == 1 and tree_hashes(str(tmp_path / aside[0])) == tree_hashes(source)
    assert tree_hashes(target) == tree_hashes(source)


def test_the_secrets_file_is_stored_encrypted_and_restored_with_mode_600(sbed, tmp_path):
    meta = backed_up(sbed, "secrets_backup")
    blob = stored(sbed, meta["object_key"])
    assert blob.startswith(b"age-encryption.org/v1")
    assert not any(v.encode() in blob for v in SECRETS.values())
    assert not any(v in json.dumps(meta, default=str) for v in SECRETS.values())

    target = str(tmp_path / "restored.env")
    done = cli(sbed, "restore", "secrets", "--date", DAY, "--to", target, "--identity", sbed.operator_identity_file)
    assert done.returncode == 0, done.stderr
    with open(target, "rb") as fh, open(sbed.secrets_file, "rb") as orig:
        assert fh.read() == orig.read()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert not any(v in done.stdout + done.stderr for v in SECRETS.values())
    refused = cli(sbed, "restore", "secrets", "--date", DAY, "--to", target, "--identity", sbed.identity_file)
    assert refused.returncode == 1 and "already holds data" in refused.stderr


def test_restore_list_shows_each_targets_days(sbed):
    for asset in ("redis_backup", "secrets_backup"):
        backed_up(sbed, asset)
    listing = cli(sbed, "restore", "--list")
    assert listing.returncode == 0, listing.stderr
    rows = [line.split() for line in listing.stdout.splitlines()[1:]]
    days = {(r[0], r[1]) for r in rows}
    assert ("redis", DAY) in days and ("secrets", DAY) in days, listing.stdout
    unknown = cli(sbed, "restore", "nosuch", "--date", DAY)
    assert unknown.returncode == 1 and "no backup target 'nosuch'" in unknown.stderr


def test_the_restored_check_restores_each_target_into_scratch_and_verifies_it(sbed, docker_client):
    for asset in ("redis_backup", "vaultwarden_backup", "caddy_backup", "secrets_backup"):
        backed_up(sbed, asset)
    with dg.instance_for_test() as instance:
        for asset in ("redis_backup", "vaultwarden_backup", "caddy_backup", "secrets_backup"):
            results = sbed.run_check_results(asset, DAY, instance, RESTORED)
            assert results.passed, (asset, results.metadata["verified"].value)
            verified = results.metadata["verified"].value
            assert "each sha256 as captured" in verified or "sha256 as captured" in verified, verified
            if asset == "redis_backup":
                assert f"loaded {REDIS_KEYS} keys" in verified, verified
            if asset == "vaultwarden_backup":
                assert "integrity_check: ok" in verified, verified
                # as the service runs (Grafana's uid), on a folder restored with its owners
                assert f"container as user {SERVICE_UID}:{SERVICE_UID} on the restored data: healthy" in verified
    # nothing the drills started is left: scratch containers and folders
    assert not docker_client.containers.list(all=True, filters={"label": "prodg.scratch=restore",
                                                                "name": f"prodg-drill-{DAY}"})
    drills = os.path.join(ConfigRepo(repo_path=sbed.repo).deployed_dir, ".drills")
    assert not os.path.isdir(drills) or not os.listdir(drills)


def test_a_drill_on_a_stored_object_that_is_not_the_captured_one_fails_and_telegram_hears_both(sbed, tmp_path):
    meta = backed_up(sbed, "caddy_backup")
    client = sbed.store().client
    original = stored(sbed, meta["object_key"])
    secrets_file = tmp_path / "notify.env"
    secrets_file.write_text(f"TELEGRAM_BOT_TOKEN={TOKEN}\n")
    drill = {KIND_TAG: DRILL_KIND}
    with TelegramStandIn(TOKEN) as telegram, dg.instance_for_test() as instance:
        good, ok_run = sbed.run_check("caddy_backup", DAY, instance, RESTORED, drill)
        assert good.passed
        notify(instance, ok_run, telegram.url, secrets_file)
        client.put_object(Bucket=BUCKET, Key=meta["object_key"], Body=original[:-64] + os.urandom(64))
        try:
            bad, bad_run = sbed.run_check("caddy_backup", DAY, instance, RESTORED, drill)
        finally:
            client.put_object(Bucket=BUCKET, Key=meta["object_key"], Body=original)
        assert not bad.passed
        assert "expected " + meta["sha256"] in bad.metadata["verified"].value
        notify(instance, bad_run, telegram.url, secrets_file)
        told_ok, told_bad = (m["text"] for m in telegram.messages)
    assert f"restore drill: caddy_backup of {DAY} restored and verified" in told_ok
    assert f"restore drill: caddy_backup of {DAY} did NOT restore" in told_bad and meta["sha256"] in told_bad
    assert f"/runs/{bad_run.run_id}" in told_bad and TOKEN not in told_bad


def notify(instance, result, telegram_url: str, secrets_file) -> None:
    """restore_drill_notifier's tick for the drill run `result`."""
    run = instance.get_run_by_id(result.run_id)
    event = [r.dagster_event for r in instance.all_logs(result.run_id, of_type=dg.DagsterEventType.RUN_SUCCESS)][0]
    restore_drill_notifier(dg.build_run_status_sensor_context(
        sensor_name=restore_drill_notifier.name, dagster_event=event, dagster_instance=instance, dagster_run=run,
        resources={"telegram": TelegramNotifier(api_base_url=telegram_url, chat_id="-100777"),
                   "secrets": SecretSource(source="env_file", env_file=str(secrets_file))}))
