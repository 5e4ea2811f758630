"""Backup and restore time per service-data target on the test bed's data: Redis (BGSAVE, N keys), a SQLite service
(the stand-in, writing while it is backed up), Caddy-like files, the secrets file — each backed up by its asset
(materialised in process against the real Engine and a moto_server bucket) and restored by `prodg restore`'s code
path into a fresh folder, each beside a baseline measured in the same run on the same data:
- backup vs `tar -c <folder> | zstd -3 > /dev/null` of the same data folder on the host (for Redis: its RDB file
  after a BGSAVE; for SQLite: the database file, a copy that is not consistent — what the capture path costs over it);
- restore vs `zstd -dc | tar -x` of that tar into a fresh folder.
Prints a table and appends to bench/RESULTS.md. Measures; never asserts.

    .venv/bin/python bench/service_data.py [--redis-keys 300000] [--sqlite-rows 40000] [--files 400]
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

PID = os.getpid()
NAME = f"prodgbenchsd{PID}"
BUCKET = f"prodg-bench-data-{PID}"
KEY_ID, SECRET = "AKIDBENCHDATA", "bench-data-secret"
REDIS_PASSWORD = f"bench-redis-{PID}"
DAY = (datetime.datetime.now(datetime.timezone.utc).date() - datetime.timedelta(days=1)).isoformat()


def write_config(repo: str, data: str, store_url: str, secrets_file: str, recipient: str, rows: int) -> None:
    os.makedirs(os.path.join(repo, "config", "compose"), exist_ok=True)
    with open(os.path.join(repo, "config", "prodg.yaml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            compose_file: compose/docker-compose.yml
            host: {{hostname: bench.local, os: Debian, min_free_disk_gb: 1, public_ports: [], bind_roots: ["{data}"]}}
            secrets:
              source: env_file
              env_file: {secrets_file}
              required: {{REDIS_PASSWORD: {{used_by: [redis], purpose: Redis authentication}}}}
            backups:
              bucket: {BUCKET}
              endpoint_url: {store_url}
              region: us-east-1
              access_key_id_env: PRODG_BENCH_KEY_ID
              secret_access_key_env: PRODG_BENCH_SECRET
              start_date: "2026-01-01"
              encryption: {{recipients: {{host: {recipient}}}}}
              targets:
                redis: {{method: volume, service: redis, capture: redis_bgsave, prefix: redis/, retention_days: 30}}
                sqlite: {{method: volume, service: sqlite, capture: sqlite, path: /data, prefix: sqlite/,
                          retention_days: 30}}
                caddy: {{method: volume, service: caddy, capture: files, path: /data, prefix: caddy/,
                         retention_days: 30}}
                secrets: {{method: secrets_file, prefix: secrets/, retention_days: 90}}
            """))
    with open(os.path.join(repo, "config", "compose", "docker-compose.yml"), "w") as fh:
        fh.write(textwrap.dedent(f"""\
            name: {NAME}
            networks: {{internal: {{name: {NAME}_internal}}}}
            services:
              redis:
                image: prodg/redis:bookworm
                container_name: {NAME}-redis
                command: [sh, -c, 'exec redis-server --appendonly yes --requirepass "$$REDIS_PASSWORD"']
                environment: {{REDIS_PASSWORD: "${{REDIS_PASSWORD}}"}}
                volumes: ["{data}/redis:/data"]
                x-prodg: {{layer: data_stores}}
              sqlite:
                image: prodg/sqlite-app:bookworm
                container_name: {NAME}-sqlite
                environment: {{SQLITE_APP_DB: /data/db.sqlite3, SQLITE_APP_SEED_ROWS: "{rows}"}}
                volumes: ["{data}/sqlite:/data"]
                x-prodg: {{layer: data_stores}}
              caddy:
                image: prodg/base:bookworm
                container_name: {NAME}-caddy
                command: [sleep, infinity]
                volumes: ["{data}/caddy:/data"]
                x-prodg: {{layer: tls}}
            """))


def timed(fn) -> tuple[float, object]:
    started = time.monotonic()
    value = fn()
    return time.monotonic() - started, value


def sh(cmd: str) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-keys", type=int, default=300_000)
    parser.add_argument("--sqlite-rows", type=int, default=40_000)
    parser.add_argument("--files", type=int, default=400)
    args = parser.parse_args()

    import dagster as dg

    import docker
    from bench.common import append_result
    from bench.fixtures import moto_bucket
    from prodg_assets.agekeys import read_identities
    from prodg_assets.backups.assets.definitions import backup_definitions
    from prodg_assets.backups.format.crypt import BackupIdentity
    from prodg_assets.backups.restore.files import redis_aof_from_rdb, restore_file, restore_folder
    from prodg_assets.backups.store.client import BackupStore
    from prodg_assets.backups.store.manifest import read_manifest
    from prodg_assets.desired import DirTree, load_desired_state
    from prodg_assets.engine.client import DockerEngine
    from prodg_assets.engine.exec import exec_run
    from prodg_assets.gitops.repo import ConfigRepo
    from prodg_assets.secret_source import SecretSource
    from tests.conftest import age_keygen, init_repo

    client = docker.from_env()
    tmp = tempfile.mkdtemp(prefix="prodg-bench-data-")
    data, repo = os.path.join(tmp, "data"), os.path.join(tmp, "repo")
    secrets_file, identity = os.path.join(tmp, "secrets.env"), os.path.join(tmp, "host.agekey")
    containers = []
    rows = []
    try:
        with open(secrets_file, "w") as fh:
            fh.write(f"REDIS_PASSWORD={REDIS_PASSWORD}\n" + "".join(f"EXTRA_{i}={os.urandom(24).hex()}\n"
                                                                     for i in range(40)))
        os.chmod(secrets_file, 0o600)
        with moto_bucket(BUCKET, KEY_ID, SECRET) as moto:
            write_config(repo, data, moto.url, secrets_file, age_keygen(identity), args.sqlite_rows)
            init_repo(repo, "bench")
            state = load_desired_state(DirTree(os.path.join(repo, "config")), {})
            for name in ("redis", "sqlite", "caddy"):
                os.makedirs(os.path.join(data, name))
            for i in range(args.files):
                folder = os.path.join(data, "caddy", "certificates", f"site{i % 40}")
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, f"cert{i}.pem"), "wb") as fh:
                    fh.write(os.urandom(4096))
            for spec in state.services.values():
                env = {k: (REDIS_PASSWORD if v == "${REDIS_PASSWORD}" else v) for k, v in spec.environment}
                containers.append(client.containers.run(
                    spec.image, list(spec.command) if spec.command else None, name=spec.container_name,
                    detach=True, network_mode="none", environment=env,
                    volumes=[f"{m.source}:{m.target}" for m in spec.volumes]))
            time.sleep(2)
            fill = "for i=1,tonumber(ARGV[1]) do redis.call('SET', 'key:' .. i, string.rep('v', 200) .. i) end"
            code, _, err = exec_run(client.api, f"{NAME}-redis", ["redis-cli", "--no-auth-warning", "EVAL", fill, "0",
                                                                  str(args.redis_keys)],
                                    environment={"REDISCLI_AUTH": REDIS_PASSWORD}, timeout_s=600)
            assert code == 0, err
            store = BackupStore(endpoint_url=moto.url, region="us-east-1", bucket=BUCKET, access_key_id=KEY_ID,
                                secret_access_key=SECRET, part_size_mb=16, identity_file=identity)
            resources = {"docker": DockerEngine(), "repo": ConfigRepo(repo_path=repo, config_subdir="config"),
                         "secrets": SecretSource(source="env_file", env_file=secrets_file), "backup_store": store,
                         "backup_identity": BackupIdentity(identity_file=identity)}
            defs = backup_definitions(state)
            identities = read_identities(identity)
            os.environ.update(PRODG_BENCH_KEY_ID=KEY_ID, PRODG_BENCH_SECRET=SECRET)
            for target in state.settings.backup_targets:
                asset = target.asset
                with dg.instance_for_test() as instance:
                    backup_s, result = timed(lambda: dg.materialize(
                        list(defs.assets), resources=resources, partition_key=DAY, instance=instance,
                        selection=dg.AssetSelection.assets(asset), tags={"prodg/capture-late": "true"}))
                assert result.success, asset
                manifest = read_manifest(store, target.prefix, DAY)
                raw = manifest.raw_bytes
                out = os.path.join(tmp, f"restored-{target.name}")
                if target.method == "secrets_file":
                    restore_s, _ = timed(lambda: restore_file(store, manifest, identities, out))
                    base_backup_s, _ = timed(lambda: sh(f"zstd -3 -c {secrets_file} > /dev/null"))
                    base_restore_s = 0.0
                else:
                    def restored():
                        done = restore_folder(store, manifest, identities, out)
                        if target.capture == "redis_bgsave":
                            redis_aof_from_rdb(done.path)
                    restore_s, _ = timed(restored)
                    source = os.path.join(data, target.name)
                    member = "dump.rdb" if target.capture == "redis_bgsave" else "."
                    tar = os.path.join(tmp, f"{target.name}.tar.zst")
                    # tar says 1 for "file changed as we read it" (the SQLite service writes): a copy, not a backup
                    base_backup_s, _ = timed(lambda: sh(f"{{ tar -C {source} -cf - {member}; test $? -le 1; }} | "
                                                        f"zstd -3 -q -o {tar}"))
                    base_out = os.path.join(tmp, f"baseline-{target.name}")
                    os.makedirs(base_out)
                    base_restore_s, _ = timed(lambda: sh(f"zstd -dc {tar} | tar -C {base_out} -xf -"))
                rows.append((f"{target.name} backup ({target.capture or target.method}, {raw / 1e6:.1f} MB)",
                             f"{backup_s:.2f} s", f"{base_backup_s:.2f} s (tar, zstd -3)",
                             f"{backup_s / base_backup_s:.1f}×" if base_backup_s else "—", "reported"))
                rows.append((f"{target.name} restore (verified, decrypted, each file's sha256)",
                             f"{restore_s:.2f} s", f"{base_restore_s:.2f} s (zstd -dc, tar -x)"
                             if base_restore_s else "—",
                             f"{restore_s / base_restore_s:.1f}×" if base_restore_s else "—", "reported"))
    finally:
        for c in containers:
            c.remove(force=True, v=True)
        subprocess.run(["rm", "-rf", tmp], check=False)
    print("| figure | measured | baseline | ratio | target |\n|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    append_result("service_data", rows, [
        "backup: materialising the target's asset in process (capture, zstd-3, age, multipart upload to moto_server "
        "on the same 2 cores, the manifest); the baseline only compresses the same bytes to a local file",
        "restore: download, sha256 check of the whole object first, download again, decrypt, extract, each file's "
        "sha256 against the manifest; the baseline only decompresses and extracts a local file",
        "the small targets' backup times are a run's fixed cost (a Dagster run, the capture's lineage, the manifest, "
        "the retention listing: compare the secrets file, a few hundred bytes), not their data"])


if __name__ == "__main__":
    main()
