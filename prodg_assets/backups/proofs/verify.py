"""What a restored day is verified against, per method: each restores the day into scratch (folders under the
drill's own folder, containers with no network, labelled prodg.scratch=restore, removed afterwards) and adds what it
found to a `Verified`. Used by the `restored` check (rotation.py)."""

import hashlib
import os
import secrets as pysecrets
import sqlite3
import time
from typing import Sequence

from ...desired.interpolate import env_value
from ...engine.client import DockerEngine
from ...engine.facts import container_source
from ...secret_source import parse_env_file
from ...streams import ProducerFailed
from ..capture.dagster import HISTORY_TABLES
from ..capture.postgres import Census
from ..capture.volumes import redis_cli
from ..restore.files import compare_with_commit, redis_aof_from_rdb, restore_file, restore_folder
from ..store.download import RestoreFailed, plaintext
from .drills import DEFAULT_SCRATCH_IMAGE, SCRATCH_LABEL, restore_drill


class Verified:
    """What a drill found: each verification's name → (passed, detail)."""

    def __init__(self) -> None:
        self.results: dict[str, tuple[bool, str]] = {}

    def add(self, name: str, passed: bool, detail: str) -> None:
        self.results[name] = (passed, detail)

    @property
    def passed(self) -> bool:
        return bool(self.results) and all(ok for ok, _ in self.results.values())

    def markdown(self) -> str:
        return "\n".join(f"- {'✅' if ok else '❌'} **{name}**: {detail}" for name, (ok, detail) in
                         self.results.items())


def verify_postgres(found, state, target, manifest, identities, docker, repo, store, scratch) -> None:
    spec = state.services[target.service]
    image = container_source(docker.client, spec.container_name).image_id or DEFAULT_SCRATCH_IMAGE
    expected = Census.from_json(manifest.extra.get("row_counts") or {})
    name = f"prodg-drill-{manifest.partition}-{pysecrets.token_hex(3)}"
    drill = restore_drill(store, manifest, identities, expected, docker.client, image, name,
                          env_value(spec, "POSTGRES_USER", {}) or "postgres")
    found.add("sha256", True, f"{manifest.objects[0].object_key} as the manifest recorded")
    found.add("row counts", drill.passed, f"{drill.tables} tables, {drill.rows} rows" if drill.passed
              else "; ".join(drill.findings[:10]))


def verify_dagster(found, state, target, manifest, identities, docker, repo, store, scratch) -> None:
    """Dagster's database restored into a scratch Postgres of the image it was dumped from: every table there, and
    at least the runs and events counted at dump time (this very run wrote more while it was dumped)."""
    image = manifest.image_id or DEFAULT_SCRATCH_IMAGE
    expected = Census.from_json(manifest.extra.get("row_counts") or {})
    database = str(manifest.extra.get("database") or "dagster")
    history = {f"{database}/{table}": name for name, table in HISTORY_TABLES.items()}
    name = f"prodg-drill-{manifest.partition}-{pysecrets.token_hex(3)}"
    drill = restore_drill(store, manifest, identities, expected, docker.client, image, name,
                          str(manifest.extra.get("db_user") or "postgres"), grown=frozenset(history))
    found.add("sha256", True, f"{manifest.objects[0].object_key} as the manifest recorded")
    counts = ", ".join(f"{drill.actual.rows.get(t, 0)} {n} (≥ {expected.rows.get(t, 0)})" for t, n in history.items())
    found.add("history", drill.passed, f"{counts}; {drill.tables} tables" if drill.passed
              else "; ".join(drill.findings[:10]))


def verify_mirror(found, state, target, manifest, identities, docker, repo, store, scratch) -> None:
    bad = []
    for entry in manifest.objects:
        md5, size = hashlib.md5(usedforsecurity=False), 0
        for chunk in plaintext(store, manifest, entry, identities):
            md5.update(chunk)
            size += len(chunk)
        single_part = entry.source_etag and "-" not in entry.source_etag
        if size != entry.raw_bytes or (single_part and md5.hexdigest() != entry.source_etag.strip('"')):
            bad.append(f"{entry.bucket}/{entry.key}")
    found.add("objects", not bad, f"{len(manifest.objects)} objects decrypted; sha256, size and MD5 as captured"
              if not bad else f"differ: {', '.join(bad[:10])}")


def verify_config(found, state, target, manifest, identities, docker, repo, store, scratch) -> None:
    done = restore_folder(store, manifest, identities, os.path.join(scratch, "config"))
    found.add("files", True, f"{done.files} files extracted")
    differ = compare_with_commit(repo.path, repo.config_subdir, manifest.commit, done.path)
    found.add("commit", not differ, f"identical to {manifest.commit[:12]}" if not differ
              else f"differs in {', '.join(differ[:10])}")


def verify_secrets(found, state, target, manifest, identities, docker, repo, store, scratch) -> None:
    done = restore_file(store, manifest, identities, os.path.join(scratch, "secrets.env"))
    with open(done.path, encoding="utf-8", errors="replace") as fh:
        names = sorted(parse_env_file(fh.read()))
    same = names == manifest.extra.get("names") and done.sha256["secrets.env"] == manifest.extra.get("plain_sha256")
    found.add("secrets file", same, f"{len(names)} names, sha256 as captured" if same
              else "the restored file is not the one captured")


def verify_volume(found, state, target, manifest, identities, docker, repo, store, scratch) -> None:
    spec = state.services[target.service]
    done = restore_folder(store, manifest, identities, os.path.join(scratch, "data"))  # checks every file's sha256
    found.add("files", True, f"{done.files} files, {done.bytes} bytes, each sha256 as captured")
    image = container_source(docker.client, spec.container_name).image_id or spec.image
    if target.capture == "redis_bgsave":
        redis_aof_from_rdb(done.path)
        with ScratchContainer(docker, image, done.path, target.path, manifest.partition,
                                command=["redis-server", "--appendonly", "yes"]) as name:
            keys = _redis_keys(docker, name)
        expected = int(manifest.extra.get("redis_keys", -1))
        # DBSIZE is read just before BGSAVE: a busy Redis may differ by what was written in between (1% allowed)
        found.add("redis", expected >= 0 and abs(keys - expected) <= expected // 100,
                  f"loaded {keys} keys ({expected} just before the snapshot)")
    elif target.capture == "sqlite":
        for rel in sorted(done.sha256):
            path = os.path.join(done.path, rel)
            with open(path, "rb") as fh:
                if fh.read(16) != b"SQLite format 3\x00":
                    continue
            con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
            try:
                verdict = "; ".join(r[0] for r in con.execute("PRAGMA integrity_check"))
            finally:
                con.close()
            found.add(f"sqlite {rel}", verdict == "ok", f"integrity_check: {verdict[:200]}")
        if spec.healthcheck or _image_healthcheck(docker, image):
            # the service as configured (its other binds read-only: config files; never the Docker socket), no
            # secrets, no network, on the restored data
            env = {k: v for k, v in spec.environment if "${" not in v}
            binds = [f"{m.source}:{m.target}:ro" for m in spec.volumes if m.kind == "bind"
                     and m.target.rstrip("/") != target.path and not m.source.endswith("docker.sock")]
            with ScratchContainer(docker, image, done.path, target.path, manifest.partition, env=env, binds=binds,
                                  command=list(spec.command) if spec.command else None, user=spec.user) as name:
                health = _wait_health(docker, name)
            as_user = f" as user {spec.user}" if spec.user else ""
            found.add("service", health == "healthy", f"a scratch {spec.name} container{as_user} on the restored "
                                                        f"data: {health}")


VERIFY = {"pg_dumpall": verify_postgres, "dagster_storage": verify_dagster, "s3_mirror": verify_mirror,
          "config_archive": verify_config, "secrets_file": verify_secrets, "volume": verify_volume}


class ScratchContainer:
    """A container from `image` on `folder` (mounted at `path`), no network, labelled scratch, as the service's
    `user` (the restored folder keeps its owners: Grafana's 472 reads and writes it as in production); removed on
    exit."""

    def __init__(self, docker: DockerEngine, image: str, folder: str, path: str, day: str, env: dict | None = None,
                 command: list | None = None, binds: Sequence[str] = (), user: str = ""):
        self.docker, self.args = docker, dict(image=image, command=command, detach=True, network_mode="none",
                                              volumes=[f"{folder}:{path}", *binds], environment=env or {},
                                              labels={SCRATCH_LABEL: "restore"}, user=user or None)
        self.name = f"prodg-drill-{day}-{pysecrets.token_hex(3)}"

    def __enter__(self) -> str:
        self.container = self.docker.client.containers.run(name=self.name, **self.args)
        return self.name

    def __exit__(self, *exc) -> None:
        try:
            self.container.remove(force=True, v=True)
        except Exception:  # already gone
            pass


def _redis_keys(docker: DockerEngine, name: str, attempts: int = 150) -> int:
    for _ in range(attempts):
        try:
            if redis_cli(docker.client.api, name, "", "PING") == "PONG":
                return int(redis_cli(docker.client.api, name, "", "DBSIZE"))
        except ProducerFailed:
            pass
        time.sleep(0.2)
    raise RestoreFailed(f"the scratch Redis {name} did not load the restored data")


def _image_healthcheck(docker: DockerEngine, image: str) -> bool:
    try:
        return bool(docker.client.images.get(image).attrs.get("Config", {}).get("Healthcheck"))
    except Exception:
        return False


def _wait_health(docker: DockerEngine, name: str, attempts: int = 300) -> str:
    status = "starting"
    for _ in range(attempts):
        state = docker.client.api.inspect_container(name)["State"]
        status = (state.get("Health") or {}).get("Status", "none")
        if status in ("healthy", "unhealthy") or not state.get("Running"):
            return status if state.get("Running") else f"exited ({state.get('ExitCode')})"
        time.sleep(0.2)
    return status
