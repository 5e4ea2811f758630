"""`prodg restore`: one command for every target, driven by the day's manifest (sha256 verified before a byte is
written, decrypted with the operator's or the host's identity), and `prodg restore --list`, what the store holds
per target and day.

- `postgres`: into a fresh scratch container (left running, its name printed) or --target, a container or a
  service of the config (refused over data unless --force).
- `dagster` (method dagster_storage): Dagster's own database, likewise: --target dagster-postgres --force puts the
  history back into docker/prod's Postgres (its daemon, webserver and code server stopped first).
- a `volume` target: into the service's data folder on this machine (or --to), refused while the service's
  container runs on that folder and over existing data unless --force (then the old data is moved aside).
- `secrets`: the secrets file (prodg.yaml secrets.env_file, or --to), mode 600, same refusal.
- `configs`: into --to, laid out as the repo is (`config/…`), then compared file by file with its commit in the
  config repo.
- `minio`: back through MinIO's S3 API, into the objects' own buckets or --to BUCKET, --only BUCKET/PREFIX,
  refused over existing objects unless --force.
- `--files`: the secrets file, then every service's data folder, each where it belongs (a rebuilt host, before its
  first deploy)."""

from __future__ import annotations

import datetime
import os
import secrets as pysecrets
from typing import Callable

from ...agekeys import AgeError, read_identities
from ...contract import LABEL_SCRATCH
from ...desired import DesiredState
from ...settings import BackupTarget
from ..store.client import BackupStore, minio_endpoint
from ..store.download import RestoreFailed
from ..store.keys import MANIFEST_NAME, key_date
from ..store.manifest import Manifest, ManifestError, read_manifest, read_manifests
from ..store.objects import StoreError
from .files import RestoredFiles, compare_with_commit, redis_aof_from_rdb, restore_file, restore_folder
from .minio import restore_minio
from .postgres import DEFAULT_POSTGRES_IMAGE, RestoreRefused, restore_postgres, wait_ready


class RestoreUsage(Exception):
    """The command cannot run as asked (unknown target, no backup that day, no identity); nothing was changed."""


# What a restore fails with, each message one line for the operator (no traceback)
RESTORE_FAILURES = (AgeError, ManifestError, StoreError, RestoreFailed, RestoreRefused, RestoreUsage)


def find_target(state: DesiredState, name: str) -> BackupTarget:
    targets = {t.name: t for t in state.settings.backup_targets}
    if name not in targets:
        raise RestoreUsage(f"no backup target {name!r} in prodg.yaml (targets: {', '.join(sorted(targets))})")
    return targets[name]


def day_manifest(store: BackupStore, target: BackupTarget, day: datetime.date) -> Manifest:
    manifest = read_manifest(store, target.prefix, day.isoformat())
    if manifest is None:
        raise RestoreUsage(f"no complete {target.name} backup for {day}: no {target.prefix}{day}/{MANIFEST_NAME} in "
                           f"{store.bucket} (`prodg restore --list` shows the days there are)")
    return manifest


def operator_identities(manifest: Manifest, identity_file: str) -> list:
    """The identities an operator gave (--identity, PRODG_BACKUP_IDENTITY) to decrypt `manifest`; none needed for a
    backup stored unencrypted."""
    identities = read_identities(identity_file) if manifest.encrypted and identity_file else []
    if manifest.encrypted and not identities:
        raise RestoreUsage("the backup is encrypted; give the identity file with --identity (or "
                           "PRODG_BACKUP_IDENTITY)")
    return identities


def data_folder(state: DesiredState, target: BackupTarget) -> str:
    """Where the service keeps the target's data on this machine: the source of its bind mount of the path."""
    spec = state.services[target.service or ""]
    mount = next((m for m in spec.volumes if m.target.rstrip("/") == target.path), None)
    if mount is None or mount.kind != "bind":
        raise RestoreUsage(f"the {spec.name} service keeps {target.path} in "
                           f"{'a named volume' if mount else 'no mount'}; give the folder to restore into with --to")
    return mount.source


def refuse_running(client, state: DesiredState, target: BackupTarget, folder: str) -> None:
    """A service must not be running on the folder being restored into: it would overwrite or ignore it."""
    spec = state.services[target.service or ""]
    try:
        container = client.containers.get(spec.container_name)
    except Exception:  # no such container (or no Engine): nothing runs on the folder
        return
    sources = {m.get("Source", "") for m in container.attrs.get("Mounts", [])}
    if container.status == "running" and os.path.abspath(folder) in sources:
        raise RestoreRefused(f"the {spec.name} service's container {spec.container_name} is running on {folder}; "
                             f"stop it first (docker stop {spec.container_name}), restore, then start it — or "
                             f"restore elsewhere with --to")


def file_targets(state: DesiredState) -> list[str]:
    """The targets restored onto this host's filesystem, in the order a rebuilt host needs them before its first
    deploy: the secrets file, then every service's data folder (`prodg restore --files`)."""
    order = {"secrets_file": 0, "volume": 1}
    targets = [t for t in state.settings.backup_targets if t.method in order]
    return [t.name for t in sorted(targets, key=lambda t: (order[t.method], t.name))]


def restore(state: DesiredState, commit: str, resources: dict, name: str, day: datetime.date, *, to: str = "",
            force: bool = False, identity_file: str = "", pg_container: str = "", only: str = "") -> str:
    """Restore target `name`'s backup of `day`; returns what was done, in one line."""
    target = find_target(state, name)
    store = resources["backup_store"].process_config_and_initialize()  # resolves its EnvVar credentials
    manifest = day_manifest(store, target, day)
    identities = operator_identities(manifest, identity_file)
    origin = f"captured {manifest.captured_at} at commit {manifest.commit[:12]}; sha256 verified" \
             f"{', decrypted' if manifest.encrypted else ''}"
    if target.method in ("pg_dumpall", "dagster_storage"):
        docker = resources["docker"]
        client = docker.client
        # Dagster's database logs in as the user it was dumped as (docker/prod's `dagster`)
        db_user = str(manifest.extra.get("db_user") or "postgres")
        # --target: a container, or a service of the config (its container: what a rebuilt host just deployed)
        container = state.services[pg_container].container_name if pg_container in state.services else pg_container
        if not container:
            if target.method == "pg_dumpall":
                image, _ = docker.resolve_image(state.services[target.service or ""], state, commit, build=False)
            else:  # the image Dagster's Postgres ran, if this Engine still has it
                image = manifest.image_id if _has_image(client, manifest.image_id) else DEFAULT_POSTGRES_IMAGE
            container = f"prodg-restore-{day.isoformat()}-{pysecrets.token_hex(3)}"  # unique on a shared Engine
            client.containers.run(image, detach=True, name=container, network_mode="none",
                                  environment={"POSTGRES_PASSWORD": pysecrets.token_urlsafe(18),
                                               "POSTGRES_USER": db_user, "POSTGRES_DB": "postgres"},
                                  labels={LABEL_SCRATCH: "manual"})
            wait_ready(client.api, container, db_user)
        result = restore_postgres(store, manifest, identities, client.api, container, db_user, force=force)
        return (f"restored {result.key} ({origin}) into container {container}: {result.sql_bytes} bytes of SQL in "
                f"{result.duration_s:.1f}s")
    if target.method == "volume":
        folder = to or data_folder(state, target)
        refuse_running(resources["docker"].client, state, target, folder)
        done = restore_folder(store, manifest, identities, folder, force=force)
        if target.capture == "redis_bgsave":
            redis_aof_from_rdb(done.path)
        return _files_line(manifest, origin, done)
    if target.method == "secrets_file":
        done = restore_file(store, manifest, identities, to or resources["secrets"].env_file, force=force)
        return _files_line(manifest, origin, done)
    if target.method == "config_archive":
        if not to:
            raise RestoreUsage("give the folder to restore the config tree into with --to (the live config is "
                               "the git repo: deploy a commit to roll back)")
        done = restore_folder(store, manifest, identities, to, force=force)
        repo = resources["repo"]
        differ = compare_with_commit(repo.path, repo.config_subdir, manifest.commit, done.path)
        if differ:
            raise RestoreFailed(f"the restored config in {done.path} differs from commit {manifest.commit[:12]} in: "
                                f"{', '.join(differ[:10])}")
        return _files_line(manifest, origin, done) + f"; identical to commit {manifest.commit[:12]}"
    if target.method == "s3_mirror":
        source = resources["minio_source"].with_secrets(
            resources["secrets"].values(),
            minio_endpoint(resources["docker"], state.services.get(target.service or "")))
        done = restore_minio(store, manifest, identities, source, to_bucket=to, only=only, force=force)
        return (f"restored {done.objects} objects ({done.bytes} bytes; {origin}, each object's sha256 as captured) "
                f"into MinIO {source.endpoint_url}, buckets {', '.join(done.buckets)}")
    raise RestoreUsage(f"{target.name}: no restore for method {target.method}")


def _has_image(client, image: str) -> bool:
    try:
        return bool(image) and bool(client.images.get(image))
    except Exception:  # not on this Engine (a rebuilt host): the default image
        return False


def _files_line(manifest: Manifest, origin: str, done: RestoredFiles) -> str:
    aside = f"; what was there is in {done.moved_aside}" if done.moved_aside else ""
    return (f"restored {manifest.objects[0].object_key} ({origin}) into {done.path}: {done.files} files, "
            f"{done.bytes} bytes{aside}")


def list_backups(state: DesiredState, store: BackupStore, out: Callable[[str], None] = print) -> int:
    """Every target's days in the store with their captured_at, objects and sizes; returns how many days."""
    rows = []
    for target in state.settings.backup_targets:
        keys = sorted(o.key for o in store.list(target.prefix)
                      if o.key.endswith(f"/{MANIFEST_NAME}") and key_date(o.key, target.prefix))
        for key, read in sorted(read_manifests(store, keys).items()):
            day = key_date(key, target.prefix)
            if read.manifest is None:
                rows.append((target.name, str(day), "unreadable manifest", "", "", "", read.error))
                continue
            m = read.manifest
            rows.append((target.name, m.partition, m.captured_at, str(len(m.objects)), _size(m.raw_bytes),
                         _size(m.bytes), "captured late" if m.captured_late else ""))
    header = ("target", "day", "captured_at", "objects", "data", "stored", "note")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    return len(rows)


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"

