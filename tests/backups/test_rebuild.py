"""The bare-metal rebuild (docs/OPERATIONS.md, "Rebuilding the host from nothing"), run as written.

A test bed that carries every kind of backup target — Postgres, MinIO (the s3-store stand-in, a real S3 server on its
data folder), Redis, three SQLite services (one running as Grafana's uid 472), Caddy's files, the secrets file and the
config — is deployed by `prodg deploy`, given known data, and backed up by the nightly job (`dagster job execute`).
Then the host is lost: its containers, network, data folders, deploy root, config repo, secrets file, host identity
and Dagster history are removed. What remains is the off-site store (moto) and the operator's identity file. The
runbook's block brings the bed back, and the data must be what it was: Postgres row counts and a checksum of a table,
every MinIO object's sha256, every Redis key and value, each SQLite database's rows and content hash (its service's
own probe), Caddy's files, the secrets file and the config tree.

The Engine is shared with other runs, so "empty" means empty of this bed: the images stay (on a new host they are
pulled again through the same registry)."""

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import textwrap
import uuid

import boto3
import pytest

from prodg_assets.backups.capture.postgres import census
from prodg_assets.contract import BACKUP_KIND, CAPTURE_LATE_TAG, KIND_TAG, LABEL_HELPER, LABEL_SCRATCH, PARTITION_TAG
from prodg_assets.engine.exec import exec_run
from prodg_assets.engine.facts import published_port
from tests.backups.conftest import (
    EXPECTED_ROWS,
    MINIO_OBJECTS,
    SEED_SQL,
    STORE_KEY_ID,
    STORE_SECRET,
    TODAY,
    documented_block,
    psql,
    s3,
)
from tests.backups.test_service_data import tree_hashes, wait
from tests.conftest import ROOT, age_keygen, git, init_repo

pytestmark = pytest.mark.docker

PID = uuid.uuid4().hex[:8]  # this run's: names no other run on the Engine or store has
NAME = f"prodgrb{PID}"
BUCKET = f"prodg-rebuild-{PID}"
DAY = (TODAY - datetime.timedelta(days=1)).isoformat()
START = (TODAY - datetime.timedelta(days=5)).isoformat()
SECRETS = {"POSTGRES_PASSWORD": f"pg-Rebuild-{PID}-71aa", "REDIS_PASSWORD": f"redis-Rebuild-{PID}-02bb",
           "MINIO_ROOT_PASSWORD": f"minio-Rebuild-{PID}-c3c3", "INFISICAL_ENCRYPTION_KEY": f"infisical-{PID}-d4d4"}
# target → the path its stand-in keeps its database in; the service is `<target>-app` (a service named grafana would
# get Grafana's own health check)
SQLITE_SERVICES = {"vaultwarden": "/data", "headscale": "/var/lib/headscale", "grafana": "/var/lib/grafana"}
GRAFANA_UID = 472
REDIS_KEYS = 1000
SEED_ROWS = 2000
MARKER = "<!-- bare-metal-rebuild"


def write_config(repo: str, recipients: dict[str, str], signer: str) -> None:
    """The bed's config: the bundled config's target names and methods, its services on stand-ins; `signer` the
    host's manifest key (what the operator's restores trust once the host is gone)."""
    os.makedirs(os.path.join(repo, "config", "compose"))
    os.makedirs(os.path.join(repo, "config", "scripts", "postgres-init"))
    shutil.copy(os.path.join(ROOT, "config", "scripts", "postgres-init", "01-databases.sql"),
                os.path.join(repo, "config", "scripts", "postgres-init"))
    sqlite_targets = "".join(
        f"    {name}: {{method: volume, service: {name}-app, capture: sqlite, path: {path}, prefix: {name}/, "
        f"retention_days: 30}}\n" for name, path in SQLITE_SERVICES.items())
    with open(os.path.join(repo, "config", "prodg.yaml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            # The rebuild test bed: every kind of backup target, on stand-ins built from Debian's packages.
            compose_file: compose/docker-compose.yml
            variables: # as the bundled config's: the host's environment overrides them
              PRODG_DATA: /opt/prodg/data
              PRODG_SECRETS_FILE: /opt/prodg/compose/.env
              BACKUP_BUCKET: prodg-backups
              BACKUP_ENDPOINT_URL: http://127.0.0.1:9 # the test sets the store's
              MINIO_ROOT_USER: rebuild-admin
            host: {{hostname: rebuild-testbed.local, os: Debian, min_free_disk_gb: 1, public_ports: [],
                    bind_roots: ["${{PRODG_DATA}}"]}}
            secrets:
              source: env_file
              env_file: ${{PRODG_SECRETS_FILE}}
              required:
                POSTGRES_PASSWORD: {{used_by: [postgres], purpose: database authentication}}
                REDIS_PASSWORD: {{used_by: [redis], purpose: Redis AUTH}}
                MINIO_ROOT_PASSWORD: {{used_by: [minio], purpose: MinIO root}}
                INFISICAL_ENCRYPTION_KEY: {{used_by: [], purpose: decrypts Infisical's rows}}
            deploy: {{health_timeout_s: 90, stop_timeout_s: 5}}
            backups:
              bucket: ${{BACKUP_BUCKET}}
              endpoint_url: ${{BACKUP_ENDPOINT_URL}}
              region: us-east-1
              access_key_id_env: B2_KEY_ID
              secret_access_key_env: B2_KEY_SECRET
              start_date: "{START}"
              encryption:
                recipients: {{{", ".join(f"{k}: {v}" for k, v in recipients.items())}}}
              signers: {{host: {signer}}}
              targets:
                postgres: {{method: pg_dumpall, service: postgres, prefix: postgres/, retention_days: 30}}
                minio: {{method: s3_mirror, service: minio, prefix: minio/, retention_days: 30}}
                configs: {{method: config_archive, prefix: configs/, retention_days: 90}}
                redis: {{method: volume, service: redis, capture: redis_bgsave, prefix: redis/, retention_days: 30}}
            """) + sqlite_targets + textwrap.indent(textwrap.dedent("""\
                caddy: {method: volume, service: caddy, capture: files, path: /data, prefix: caddy/, retention_days: 30}
                secrets: {method: secrets_file, prefix: secrets/, retention_days: 90}
            """), "    "))
    sqlite_services = "".join(textwrap.indent(textwrap.dedent(f"""\
        {name}-app:
          image: prodg/sqlite-app:bookworm
          container_name: {NAME}-{name}-app
          user: "{f'{GRAFANA_UID}:{GRAFANA_UID}' if name == 'grafana' else '0:0'}"
          environment: {{SQLITE_APP_DB: {path}/db.sqlite3, SQLITE_APP_SEED_ROWS: "{SEED_ROWS}",
                        SQLITE_APP_WRITE_INTERVAL_MS: "0"}}
          volumes: ["${{PRODG_DATA}}/{name}:{path}"]
          networks: [internal]
          x-prodg: {{layer: data_stores}}
        """), "  ") for name, path in SQLITE_SERVICES.items())
    with open(os.path.join(repo, "config", "compose", "docker-compose.yml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            name: {NAME}
            networks:
              internal:
                name: {NAME}_internal
            services:
              postgres:
                image: postgres:16-alpine
                container_name: {NAME}-postgres
                environment: {{POSTGRES_USER: postgres, POSTGRES_PASSWORD: "${{POSTGRES_PASSWORD}}"}}
                # as the bundled config: init scripts make the services' (empty) databases on a new data folder
                volumes: ["${{PRODG_DATA}}/postgres:/var/lib/postgresql/data",
                          "../scripts/postgres-init:/docker-entrypoint-initdb.d:ro"]
                networks: [internal]
                healthcheck:
                  test: [CMD-SHELL, pg_isready -U postgres -h 127.0.0.1]
                  interval: 1s
                  retries: 60
                x-prodg: {{layer: data_stores}}
              redis:
                image: redis:7-alpine
                container_name: {NAME}-redis
                command: [sh, -c, 'exec redis-server --appendonly yes --requirepass "$$REDIS_PASSWORD"']
                environment: {{REDIS_PASSWORD: "${{REDIS_PASSWORD}}"}}
                volumes: ["${{PRODG_DATA}}/redis:/data"]
                networks: [internal]
                healthcheck:
                  test: [CMD-SHELL, 'redis-cli -a "$$REDIS_PASSWORD" --no-auth-warning ping | grep -q PONG']
                  interval: 1s
                  retries: 60
                x-prodg: {{layer: data_stores}}
              minio:
                image: prodg/s3-store:bookworm
                container_name: {NAME}-minio
                environment: {{MINIO_ROOT_USER: "${{MINIO_ROOT_USER}}", """
                                 f"""MINIO_ROOT_PASSWORD: "${{MINIO_ROOT_PASSWORD}}"}}
                ports: ["127.0.0.1::9000"] # the Engine picks the host port; prodg reads it back
                volumes: ["${{PRODG_DATA}}/minio:/data"]
                networks: [internal]
                x-prodg: {{layer: data_stores}}
              caddy:
                image: prodg/base:bookworm
                container_name: {NAME}-caddy
                command: [sleep, infinity]
                volumes: ["${{PRODG_DATA}}/caddy:/data"]
                networks: [internal]
                x-prodg: {{layer: tls}}
            """) + sqlite_services)


def summary(output: str) -> str:
    """What an operator reads of a failed command: prodg's own lines, Dagster's failures, not the tracebacks."""
    keep = ("prodg", "FAILURE", "Failure", "Error:", "restored", "sha256sum", ": OK", "FAILED")
    return "\n".join(line for line in output.splitlines() if any(k in line for k in keep)
                     and not line.startswith("  File"))[-6000:]


def run(args: list[str], env: dict, cwd: str, timeout: int = 600) -> str:
    proc = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(args[:4])} exited {proc.returncode}:\n" + \
        summary(proc.stdout + proc.stderr)
    return proc.stdout


def redis_content(client) -> str:
    """sha256 over every key and value (sorted), read by Redis' own Lua."""
    script = ("local r = {} for _, k in ipairs(redis.call('KEYS', '*')) do r[#r + 1] = k .. '=' .. "
              "redis.call('GET', k) end table.sort(r) return table.concat(r, '\\n')")
    code, out, err = exec_run(client.api, f"{NAME}-redis", ["redis-cli", "--no-auth-warning", "EVAL", script, "0"],
                              environment={"REDISCLI_AUTH": SECRETS["REDIS_PASSWORD"]})
    assert code == 0, err
    assert out.count(b"\n") >= REDIS_KEYS - 1, out[:200]
    return hashlib.sha256(out).hexdigest()


def sqlite_probe(client, name: str) -> dict:
    code, out, err = exec_run(client.api, f"{NAME}-{name}-app", ["wget", "-qO-", "http://127.0.0.1:8080/check"])
    assert code == 0, (out, err)
    return json.loads(out)


def minio_port(client) -> int:
    """The host port the Engine picked for MinIO's 9000 (a new one after the rebuild)."""
    port = published_port(client.api.inspect_container(f"{NAME}-minio"), 9000)
    assert port, "MinIO's 9000 is not published"
    return port


def minio_client(port: int):
    """MinIO's S3 API as the bed's applications reach it, with its root user."""
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="rebuild-admin", aws_secret_access_key=SECRETS["MINIO_ROOT_PASSWORD"])


def minio_content(port: int) -> dict:
    client = minio_client(port)
    found = {}
    for bucket in client.list_buckets()["Buckets"]:
        for obj in client.list_objects_v2(Bucket=bucket["Name"]).get("Contents") or []:
            body = client.get_object(Bucket=bucket["Name"], Key=obj["Key"])["Body"].read()
            found[(bucket["Name"], obj["Key"])] = hashlib.sha256(body).hexdigest()
    return found


def file_sha256(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def fingerprint(client, repo: str, data: str, secrets_file: str) -> dict:
    """What the bed holds, as an operator would compare it."""
    rows = census(client.api, f"{NAME}-postgres").rows
    events = psql(client.api, f"{NAME}-postgres", "select md5(string_agg(id || ':' || note, ',' order by id)) "
                                                  "from events", db="hermes")
    return {
        "postgres rows": rows,
        "postgres hermes.events md5": events,
        "minio objects": minio_content(minio_port(client)),
        "redis": redis_content(client),
        **{f"{name} probe": {k: v for k, v in sqlite_probe(client, name).items()} for name in SQLITE_SERVICES},
        "caddy files": tree_hashes(os.path.join(data, "caddy")),
        "secrets file": file_sha256(secrets_file),
        "config tree": git(repo, "ls-tree", "-r", "HEAD", "config/"),
    }


def wipe(client, tmp_host: str) -> None:
    """The host lost: every container, network and helper of this bed, and every file of the old host."""
    for c in client.containers.list(all=True, filters={"label": f"prodg.project={NAME}"}):
        c.remove(force=True, v=True)
    for label in (LABEL_HELPER, LABEL_SCRATCH):
        for c in client.containers.list(all=True, filters={"label": label}):
            if NAME in json.dumps(c.labels) or c.name.startswith(NAME):
                c.remove(force=True, v=True)
    for n in client.networks.list(names=[f"{NAME}_internal"]):
        n.remove()
    subprocess.run(["rm", "-rf", tmp_host], check=False)  # files the containers wrote as root, too


def test_the_documented_rebuild_brings_every_target_back_from_the_store_and_the_identity_alone(
        docker_client, store_server, tmp_path):
    s3(store_server.url, STORE_KEY_ID, STORE_SECRET).create_bucket(Bucket=BUCKET)
    host, safe, workdir = str(tmp_path / "host"), str(tmp_path / "safe"), str(tmp_path / "rebuild")
    os.makedirs(safe)
    os.makedirs(workdir)
    repo, data = os.path.join(host, "config-repo"), os.path.join(host, "data")
    secrets_file = os.path.join(host, "secrets.env")
    operator_identity = os.path.join(safe, "operator.agekey")  # kept off the host
    env = {"PATH": f"{ROOT}/.venv/bin:{os.environ['PATH']}", "HOME": os.environ.get("HOME", "/root"),
           "PRODG_REPO": repo, "PRODG_DEPLOY_ROOT": os.path.join(host, "deployed"), "PRODG_DATA": data,
           "PRODG_SECRETS_FILE": secrets_file, "DAGSTER_HOME": os.path.join(host, "dagster"),
           "PRODG_BACKUP_IDENTITY": os.path.join(host, "host.agekey"),
           "PRODG_REGISTRY_MIRROR": os.environ.get("PRODG_REGISTRY_MIRROR", ""),
           "BACKUP_BUCKET": BUCKET, "BACKUP_ENDPOINT_URL": store_server.url,
           "B2_KEY_ID": STORE_KEY_ID, "B2_KEY_SECRET": STORE_SECRET,
           **{k: v for k, v in os.environ.items() if k.startswith("DOCKER_")}}
    try:
        # -- the old host: its config, secrets and keys, deployed by prodg, then given data --------------------------
        os.makedirs(env["DAGSTER_HOME"])
        with open(os.open(secrets_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write("".join(f"{k}={v}\n" for k, v in SECRETS.items()))
        recipients = {"operator": age_keygen(operator_identity), "host": age_keygen(env["PRODG_BACKUP_IDENTITY"])}
        signer = run(["prodg", "backup-signer"], env, ROOT).strip()  # the operator writes it down with the identity
        write_config(repo, recipients, signer)
        init_repo(repo, "the rebuild test bed")
        os.makedirs(os.path.join(data, "grafana"))
        os.chown(os.path.join(data, "grafana"), GRAFANA_UID, GRAFANA_UID)  # as Grafana's image expects its folder
        assert "succeeded" in run(["prodg", "deploy"], env, ROOT)
        assert {"hermes", "infisical"} <= set(psql(docker_client.api, f"{NAME}-postgres",
                                                 "select datname from pg_database").split())  # the init script's
        psql(docker_client.api, f"{NAME}-postgres",
             SEED_SQL.replace("create database hermes;\ncreate database infisical;\n", ""))
        objects = minio_client(minio_port(docker_client))
        for bucket in sorted({b for b, _ in MINIO_OBJECTS}):
            objects.create_bucket(Bucket=bucket)
        for (bucket, key), body in MINIO_OBJECTS.items():
            objects.put_object(Bucket=bucket, Key=key, Body=body)
        pipe = "".join(f"SET key:{i} value-{i}-{'x' * (i % 50)}\n" for i in range(REDIS_KEYS))
        code, _, err = exec_run(docker_client.api, f"{NAME}-redis", ["redis-cli", "--no-auth-warning"],
                                environment={"REDISCLI_AUTH": SECRETS["REDIS_PASSWORD"]}, stdin=pipe.encode())
        assert code == 0, err
        for name in SQLITE_SERVICES:
            wait(lambda: sqlite_probe(docker_client, name)["rows"] == SEED_ROWS, f"{name}'s seed")
        certs = os.path.join(data, "caddy", "caddy", "certificates", "acme-v02", "example.test")
        os.makedirs(certs)
        for name, size in (("example.test.crt", 3000), ("example.test.key", 227), ("example.test.json", 140)):
            with open(os.path.join(certs, name), "wb") as fh:
                fh.write(os.urandom(size))
        before = fingerprint(docker_client, repo, data, secrets_file)
        assert before["postgres rows"] == EXPECTED_ROWS
        assert len(before["minio objects"]) == len(MINIO_OBJECTS)

        # -- the night's backups of DAY, launched as the schedule launches them ----------------------------------------
        run(["dagster", "job", "execute", "-f", os.path.join(ROOT, "definitions.py"), "-j", "backup_job",
             "--tags", json.dumps({PARTITION_TAG: DAY, KIND_TAG: BACKUP_KIND,
                                    CAPTURE_LATE_TAG: "true"})], env, ROOT)  # past midnight, DAY is over
        listed = run(["prodg", "restore", "--list"], env, ROOT)
        for target in ("postgres", "minio", "configs", "redis", *SQLITE_SERVICES, "caddy", "secrets"):
            assert re.search(rf"^{target}\s+{DAY}\s", listed, re.M), listed

        # -- the host is lost ----------------------------------------------------------------------------------------
        wipe(docker_client, host)
        assert not docker_client.containers.list(all=True, filters={"label": f"prodg.project={NAME}"})
        assert not os.path.exists(host)
        assert os.listdir(safe) == ["operator.agekey"]

        # -- the runbook, as written, on the new host --------------------------------------------------------------
        os.makedirs(env["DAGSTER_HOME"])  # a new, empty Dagster
        rebuild_env = {**{k: v for k, v in env.items() if k != "PRODG_BACKUP_IDENTITY"},
                       "REGION": "us-east-1", "IDENTITY": operator_identity, "SIGNER": signer, "DAY": DAY}
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", documented_block(MARKER)], cwd=workdir,
                              env=rebuild_env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, summary(proc.stdout + proc.stderr)
        assert "Signature Verified Successfully" in proc.stdout  # the config day's manifest, checked by hand
        assert "config.tar.zst.age: OK" in proc.stdout
        assert "succeeded" in proc.stdout and "sha256 verified" in proc.stdout
        # `prodg restore --files`: the secrets file first, then every service's data folder
        restored = [line.split(":")[0] for line in proc.stdout.splitlines() if ": restored " in line]
        assert restored[:6] == ["secrets", "caddy", "grafana", "headscale", "redis", "vaultwarden"], restored
        # and, run again over the rebuilt host, it refuses at the first target and says so; nothing is touched
        again = subprocess.run(["prodg", "restore", "--files", "--date", DAY, "--identity", operator_identity],
                               env=rebuild_env, cwd=workdir, capture_output=True, text=True, timeout=300)
        assert again.returncode == 1 and "prodg restore --files: secrets failed" in again.stderr, again.stderr

        # -- the bed is back, with its data --------------------------------------------------------------------------
        running = {c.labels["prodg.service"]: c.status for c in
                   docker_client.containers.list(all=True, filters={"label": f"prodg.project={NAME}"})}
        assert running == {s: "running"
                           for s in ("postgres", "redis", "minio", "caddy", *(f"{n}-app" for n in SQLITE_SERVICES))}
        for name in SQLITE_SERVICES:
            wait(lambda: sqlite_probe(docker_client, name)["integrity"] == "ok", f"{name} on its restored data")
        after = fingerprint(docker_client, repo, data, secrets_file)
        for what in before:
            assert after[what] == before[what], what
        stat = os.stat(os.path.join(data, "grafana", "db.sqlite3"))
        assert (stat.st_uid, stat.st_gid) == (GRAFANA_UID, GRAFANA_UID)
    finally:
        wipe(docker_client, host)
        shutil.rmtree(str(tmp_path), ignore_errors=True)
