"""Restores from the store into real Postgres containers: the known rows come back, a non-empty target is refused
unless forced, a corrupt object never reaches the target, and an identity the backup is not encrypted to opens
nothing."""

import datetime

import pytest

import docker
from prodg_assets.agekeys import AgeError, Identity, Recipient, read_identities
from prodg_assets.backups.capture.postgres import Census, census, pg_dumpall_chunks
from prodg_assets.backups.proofs.drills import SCRATCH_LABEL, compare_census, remove_stale_scratch, scratch_postgres
from prodg_assets.backups.restore.postgres import RestoreRefused, restore_postgres, target_contents
from prodg_assets.backups.store.download import RestoreFailed
from prodg_assets.backups.store.manifest import Manifest
from prodg_assets.backups.store.stream import stream_backup
from tests.backups.conftest import EXPECTED_ROWS, NAME, PG_IMAGE, SECRETS, psql

pytestmark = pytest.mark.docker

FINGERPRINT = "select count(*), sum(id), md5(string_agg(note, ',' order by id)) from events"


def manifest_for(result, recipients) -> Manifest:
    return Manifest("postgres", "2026-11-26", "2026-11-27T03:00:00+00:00", "c" * 40, "run tag", "test", "", "",
                    "zstd", tuple(r.fingerprint for r in recipients), (result.entry(),))


@pytest.fixture(scope="module")
def dump(bed):
    """The test bed's dump, encrypted to its recipients, and its manifest."""
    store = bed.store()
    recipients = [Recipient.parse(t) for t in bed.recipients.values()]
    result = stream_backup(store, "restore-test/2026-11-26/pg_dumpall-030000.sql.zst.age",
                           pg_dumpall_chunks(bed.client.api, bed.pg, password=SECRETS["POSTGRES_PASSWORD"]),
                           recipients=recipients)
    yield manifest_for(result, recipients)
    store.delete_objects([result.key])


@pytest.fixture(scope="module")
def host(bed):
    return read_identities(bed.identity_file)


@pytest.fixture()
def scratch(bed):
    with scratch_postgres(bed.client, PG_IMAGE, f"{NAME}-scratch") as name:
        yield name
    assert not bed.client.containers.list(all=True, filters={"name": f"{NAME}-scratch"})


def test_a_restore_reproduces_the_rows_of_a_database_with_known_contents(bed, dump, host, scratch):
    assert target_contents(bed.client.api, scratch).empty
    result = restore_postgres(bed.store(), dump, host, bed.client.api, scratch)
    assert result.sql_bytes == dump.raw_bytes and result.ignored_errors >= 1  # CREATE ROLE postgres
    api = bed.client.api
    assert psql(api, scratch, FINGERPRINT, db="hermes") == psql(api, bed.pg, FINGERPRINT, db="hermes")
    assert psql(api, scratch, "select string_agg(name, ',' order by id) from app.users", db="hermes") == \
        "ada,grace,linus"
    restored = census(api, scratch)
    assert restored.rows == EXPECTED_ROWS
    assert compare_census(census(api, bed.pg), restored) == []


def test_a_non_empty_target_is_refused_unless_forced(bed, dump, host, scratch):
    store, api = bed.store(), bed.client.api
    with pytest.raises(RestoreRefused, match="not empty"):
        restore_postgres(store, dump, host, api, bed.pg)  # the live database is never overwritten
    restore_postgres(store, dump, host, api, scratch)
    psql(api, scratch, "insert into events (note) values ('written after the restore')", db="hermes")
    with pytest.raises(RestoreRefused, match="hermes, infisical"):
        restore_postgres(store, dump, host, api, scratch)
    result = restore_postgres(store, dump, host, api, scratch, force=True)
    assert set(result.wiped) == {"hermes", "infisical"}
    assert census(api, scratch).rows == EXPECTED_ROWS  # the extra row is gone: overwritten, not merged


def test_a_corrupt_object_never_reaches_the_target(bed, dump, host, scratch):
    entry = dump.objects[0]
    forged = Manifest(**{**dump.__dict__, "objects": (type(entry)(**{**entry.__dict__, "sha256": "0" * 64}),)})
    with pytest.raises(RestoreFailed, match="hash to"):
        restore_postgres(bed.store(), forged, host, bed.client.api, scratch)
    assert target_contents(bed.client.api, scratch).empty


def test_an_identity_the_backup_is_not_encrypted_to_opens_nothing(bed, dump, scratch):
    stranger = Identity.generate()
    with pytest.raises(AgeError, match="is encrypted to sha256:"):
        restore_postgres(bed.store(), dump, [stranger], bed.client.api, scratch, verify_first=False)
    assert target_contents(bed.client.api, scratch).empty


def test_census_comparison_names_the_differences():
    expected = Census(("a", "b"), {"a/public.t": 10, "a/public.u": 5, "c/public.v": 1}, ("c",))
    actual = Census(("a",), {"a/public.t": 9, "a/public.w": 1, "c/public.v": 7})
    assert compare_census(expected, actual) == ["database b is missing", "a/public.t: 10 rows at dump time, 9 restored",
                                                "table a/public.u is missing",
                                                "table a/public.w was not there at dump time"]
    assert compare_census(expected, actual, tolerance=0.2) == ["database b is missing", "table a/public.u is missing"]


def test_scratch_containers_left_behind_are_removed_once_stale(bed):
    kind = f"test-{NAME}"
    left = bed.client.containers.create(PG_IMAGE, name=f"{NAME}-left-behind", labels={SCRATCH_LABEL: kind})
    try:
        assert remove_stale_scratch(bed.client, datetime.timedelta(hours=6), kind) == []
        assert remove_stale_scratch(bed.client, datetime.timedelta(seconds=-60), kind) == [f"{NAME}-left-behind"]
        assert not bed.client.containers.list(all=True, filters={"label": f"{SCRATCH_LABEL}={kind}"})
    finally:
        try:
            left.remove(force=True)
        except docker.errors.NotFound:  # removed by the test, as it should be
            pass
