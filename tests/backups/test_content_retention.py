"""MinIO's stored content (`minio/objects/…`) under retention: an object goes only when no kept day names it."""

import datetime
import logging

import pytest

from prodg_assets.backups.store.keys import content_key
from prodg_assets.backups.store.manifest import Entry, Manifest, write_manifest
from prodg_assets.backups.store.retention import prune_content

pytestmark = pytest.mark.docker  # the bed's store (moto_server)

LOG = logging.getLogger("test")


def day_naming(store, day: str, *shas: str) -> None:
    entries = tuple(Entry(content_key("minio/", s, True), 1, 1, s, "", "media", f"k{s[:4]}", "", s) for s in shas)
    write_manifest(store, "minio/", Manifest("minio", day, f"{day}T03:00:00+00:00", "c" * 40, "deployed", "minio",
                                             "", "", "none", (), entries))


def test_stored_content_goes_only_when_no_kept_day_names_it(clean_store):
    x, y, z = ("a" * 64, "b" * 64, "c" * 64)
    for sha in (x, y, z):
        clean_store.put_bytes(content_key("minio/", sha, True), b"ciphertext of " + sha.encode())
    day_naming(clean_store, "2026-11-20", x, y)
    day_naming(clean_store, "2026-11-21", y)
    # just uploaded: a backup in progress may be about to name it, so the default grace keeps even the orphan
    assert prune_content(clean_store, "minio/", LOG) == 0
    assert prune_content(clean_store, "minio/", LOG, grace=datetime.timedelta(0)) == 1
    left = {o.key for o in clean_store.list("minio/objects/")}
    assert left == {content_key("minio/", x, True), content_key("minio/", y, True)}
    # the first day expires (retention deleted its manifest): x is named by no kept day any more, y still is
    clean_store.delete_objects(["minio/2026-11-20/manifest.json"])
    assert prune_content(clean_store, "minio/", LOG, grace=datetime.timedelta(0)) == 1
    assert {o.key for o in clean_store.list("minio/objects/")} == {content_key("minio/", y, True)}


def test_an_unreadable_manifest_stops_content_retention(clean_store):
    orphan = content_key("minio/", "d" * 64, True)
    clean_store.put_bytes(orphan, b"x")
    clean_store.put_bytes("minio/2026-11-22/manifest.json", b"not json")
    assert prune_content(clean_store, "minio/", LOG, grace=datetime.timedelta(0)) == 0
    assert [o.key for o in clean_store.list("minio/objects/")] == [orphan]
