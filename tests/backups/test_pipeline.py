"""The streaming pieces: compression, producers (pg_dumpall in the container, git archive), keys, and the pipeline
holding constant memory however much flows through it."""

import datetime
import gzip
import io
import json
import os
import tarfile
import time
import tracemalloc

import pytest
import zstandard

from prodg_assets.backups.capture.postgres import pg_dumpall_chunks
from prodg_assets.backups.format.codec import ByteCount, compress, compression_of, decompress
from prodg_assets.backups.store.keys import config_key, manifest_key, postgres_key
from prodg_assets.backups.store.stream import stream_backup
from prodg_assets.engine.exec import READ_BYTES, REBLOCK, ContainerExec, exec_chunks, exec_run, reblocked
from prodg_assets.engine.helper import HELPER_FOLDER, helper_chunks
from prodg_assets.gitops.repo import git_archive_chunks
from prodg_assets.streams import ProducerFailed
from tests.backups.conftest import NAME, SECRETS

MIB = 1024 * 1024


@pytest.mark.parametrize("method", ["zstd", "gzip"])
def test_compression_round_trips_and_counts_raw_bytes(method):
    data = [os.urandom(100_000), b"text " * 50_000, b"", os.urandom(10)]
    raw = ByteCount()
    packed = b"".join(compress(iter(data), method, raw=raw))
    assert raw.bytes == sum(map(len, data))
    assert b"".join(decompress([packed[i:i + 4096] for i in range(0, len(packed), 4096)], method)) == b"".join(data)
    # readable by the standard tools' libraries
    plain = zstandard.ZstdDecompressor().decompressobj().decompress(packed) if method == "zstd" \
        else gzip.decompress(packed)
    assert plain == b"".join(data)


def test_a_truncated_gzip_stream_is_an_error():
    packed = b"".join(compress([b"x" * 100_000], "gzip"))
    with pytest.raises(ValueError, match="truncated"):
        b"".join(decompress([packed[:-20]], "gzip"))


def test_keys_carry_the_partition_date():
    at = datetime.datetime(2026, 11, 27, 3, 0, 12, tzinfo=datetime.timezone.utc)
    assert postgres_key("postgres/", "2026-11-26", at, "zstd", True) == \
        "postgres/2026-11-26/pg_dumpall-030012.sql.zst.age"
    assert postgres_key("postgres/", "2026-11-26", at, "zstd", False) == "postgres/2026-11-26/pg_dumpall-030012.sql.zst"
    assert config_key("configs/", "2026-11-26", "a" * 40, "gzip", False) == \
        "configs/2026-11-26/config-aaaaaaaaaaaa.tar.gz"
    assert manifest_key("minio/", "2026-11-26") == "minio/2026-11-26/manifest.json"
    assert compression_of("x.sql.zst") == "zstd" and compression_of("x.tar.gz") == "gzip"
    with pytest.raises(ValueError):
        compression_of("x.sql")


def test_git_archive_streams_the_config_tree_at_a_commit(bed):
    data = b"".join(git_archive_chunks(bed.repo, bed.commit, "config", chunk_size=512))
    names = tarfile.open(fileobj=io.BytesIO(data)).getnames()
    assert "config/prodg.yaml" in names and "config/compose/docker-compose.yml" in names
    with pytest.raises(ProducerFailed, match="git archive of config at 000000000000 exited with status"):
        b"".join(git_archive_chunks(bed.repo, "0" * 40, "config"))


@pytest.mark.docker
def test_pg_dumpall_streams_the_cluster_from_inside_the_container(bed):
    chunks = list(pg_dumpall_chunks(bed.client.api, bed.pg, password=SECRETS["POSTGRES_PASSWORD"]))
    dump = b"".join(chunks)
    assert dump.startswith(b"--\n-- PostgreSQL database cluster dump\n--")
    assert b"COPY public.events (id, note) FROM stdin;" in dump and b"\\connect infisical" in dump
    assert dump.rstrip().endswith(b"-- PostgreSQL database cluster dump complete\n--")


@pytest.mark.docker
def test_pg_dumpall_through_a_helper_container_gives_the_same_dump_and_leaves_nothing_behind(bed, tmp_path):
    """The dump's fast route: a helper container from the service's image on its network, its output through a
    FIFO. Same cluster dump as through exec (the password reaches it in a pgpass file, never in its config), and the
    helper, its FIFO and its password file are gone afterwards — as is what a killed run had left."""
    api = bed.client.api
    stale = tmp_path / HELPER_FOLDER / "run-left-by-a-killed-run"  # its password file with it
    stale.mkdir(parents=True)
    (stale / "pgpass").write_text("*:*:*:postgres:old\n")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    chunks = pg_dumpall_chunks(api, bed.pg, password=SECRETS["POSTGRES_PASSWORD"], helper_root=str(tmp_path))
    first = next(chunks)
    seen = bed.helpers()
    helper = api.inspect_container(seen[0].id)
    dump = first + b"".join(chunks)
    assert dump.startswith(b"--\n-- PostgreSQL database cluster dump\n--")
    assert b"COPY public.events (id, note) FROM stdin;" in dump and b"\\connect infisical" in dump
    assert dump.rstrip().endswith(b"-- PostgreSQL database cluster dump complete\n--")
    through_exec = b"".join(pg_dumpall_chunks(api, bed.pg, password=SECRETS["POSTGRES_PASSWORD"]))
    assert dump.count(b"\n") == through_exec.count(b"\n")
    assert helper["Image"] == api.inspect_container(bed.pg)["Image"]
    assert helper["HostConfig"]["NetworkMode"] == f"container:{api.inspect_container(bed.pg)['Id']}"
    assert helper["HostConfig"]["ReadonlyRootfs"] and helper["HostConfig"]["CapDrop"] == ["ALL"]
    # as the image's postgres user, never root (docs/SECURITY.md)
    code, ids = bed.client.containers.get(bed.pg).exec_run(["sh", "-c", "echo $(id -u postgres):$(id -g postgres)"])
    assert helper["Config"]["User"] == ids.decode().strip() and not ids.startswith(b"0:"), helper["Config"]["User"]
    assert SECRETS["POSTGRES_PASSWORD"] not in json.dumps(helper)
    assert bed.helpers() == []
    assert os.listdir(os.path.join(tmp_path, HELPER_FOLDER)) == []


@pytest.mark.docker
def test_a_helper_dump_that_fails_says_why_without_the_password_and_keeps_nothing(bed, tmp_path):
    api = bed.client.api
    wrong = f"{SECRETS['POSTGRES_PASSWORD']}-but:not\\this-one"
    with pytest.raises(ProducerFailed) as err:
        list(pg_dumpall_chunks(api, bed.pg, password=wrong, helper_root=str(tmp_path)))
    assert "pg_dumpall (helper container of" in str(err.value) and "exited with status 1" in str(err.value)
    assert "password authentication failed" in str(err.value) and wrong not in str(err.value)
    assert bed.helpers() == [] and os.listdir(os.path.join(tmp_path, HELPER_FOLDER)) == []
    with pytest.raises(ProducerFailed, match="does not exist"):
        list(pg_dumpall_chunks(api, f"{NAME}-no-such-container", helper_root=str(tmp_path)))
    unwritable = tmp_path / "file"
    unwritable.write_text("not a folder")
    with pytest.raises(ProducerFailed, match="cannot make the helper's folder"):
        list(pg_dumpall_chunks(api, bed.pg, password=SECRETS["POSTGRES_PASSWORD"], helper_root=str(unwritable)))


@pytest.mark.docker
def test_a_consumer_that_gives_up_on_a_helper_ends_its_dump(bed, tmp_path):
    """pg_dumpall holds its locks until it ends: a consumer that stops reading (a failed upload) removes the helper,
    and every process in it with it."""
    api = bed.client.api
    chunks = helper_chunks(api, bed.pg, ["sh", "-c", "yes prodg-endless"], shared_root=str(tmp_path), what="endless")
    assert next(chunks).startswith(b"prodg-endless")
    assert len(bed.helpers()) == 1
    chunks.close()
    assert bed.helpers() == [] and os.listdir(os.path.join(tmp_path, HELPER_FOLDER)) == []


@pytest.mark.docker
def test_a_failing_command_raises_after_its_output_with_its_stderr_redacted(bed):
    secret = SECRETS["POSTGRES_PASSWORD"]
    out = []
    with pytest.raises(ProducerFailed) as err:
        for chunk in exec_chunks(bed.client.api, bed.pg, ["sh", "-c", f"echo partial; echo 'bad {secret}' >&2; exit 3"],
                                 what="producer", redact=lambda s: s.replace(secret, "<POSTGRES_PASSWORD>")):
            out.append(chunk)
    assert b"".join(out) == b"partial\n"
    assert str(err.value) == f"producer in container {bed.pg} exited with status 3: bad <POSTGRES_PASSWORD>"


@pytest.mark.docker
def test_reblocked_output_arrives_whole_in_large_reads_and_either_status_fails_it(bed):
    api = bed.client.api
    # 3 MiB written 100 bytes at a time: re-blocked by dd, read back in reads of at most READ_BYTES
    cmd = ["sh", "-c", "i=0; while [ $i -lt 31458 ]; do printf '%0100d' $i; i=$((i+1)); done; printf tail"]
    chunks = list(exec_chunks(api, bed.pg, reblocked(cmd), what="writer"))
    data = b"".join(chunks)
    assert len(data) == 31458 * 100 + 4 and data.endswith(b"%0100d" % 31457 + b"tail")
    assert max(map(len, chunks)) <= READ_BYTES and len(chunks) < 31458 // 10
    with pytest.raises(ProducerFailed, match=r"writer in container .* exited with status 7: bad"):
        list(exec_chunks(api, bed.pg, reblocked(["sh", "-c", "echo partial; echo bad >&2; exit 7"]), what="writer"))
    with pytest.raises(ProducerFailed, match="exited with status 127"):  # no dd: the dump must not pass as whole
        list(exec_chunks(api, bed.pg, ["sh", "-c", REBLOCK.replace("dd ", "no-such-dd "), "sh", "echo", "hi"],
                         what="writer"))


@pytest.mark.docker
def test_a_consumer_that_gives_up_ends_the_process_and_its_children_in_the_container(bed):
    """Closing the exec stream alone leaves the process running (the Engine drains its output): pg_dumpall would
    keep its locks until the dump ends. Giving up kills it, children included, and nothing else."""
    api = bed.client.api
    running = ["sh", "-c", "for p in /proc/[0-9]*; do cat $p/cmdline 2>/dev/null | tr '\\0' ' '; echo; done"]
    chunks = exec_chunks(api, bed.pg, ["sh", "-c", "yes prodg-endless | cat"], what="endless")
    assert next(chunks).startswith(b"prodg-endless")
    assert b"yes prodg-endless" in exec_run(api, bed.pg, running)[1]
    chunks.close()
    assert b"prodg-endless" not in exec_run(api, bed.pg, running)[1]
    assert b"postgres" in exec_run(api, bed.pg, running)[1]  # the server itself untouched


@pytest.mark.docker
def test_a_missing_container_is_a_producer_failure(bed):
    with pytest.raises(ProducerFailed, match="cannot run in container"):
        ContainerExec(bed.client.api, f"{NAME}-no-such-container", ["true"]).start()


def test_memory_stays_bounded_by_the_part_size_whatever_the_size_of_the_stream(bed, clean_store):
    store = bed.store()  # 5 MiB parts
    store.put_bytes("mem/warm-up", b"")  # boto3 loads its service model on the first call: not the pipeline's memory

    def peak_for(mib: int) -> int:
        def stream():
            for _ in range(mib):
                yield os.urandom(MIB)

        tracemalloc.start()
        try:
            result = stream_backup(store, f"mem/2026-11-26/{mib}.zst", stream())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.raw_bytes == mib * MIB and result.bytes > mib * MIB * 0.99  # random data does not compress
        assert store.sha256_of(result.key) == (result.sha256, result.bytes)
        return peak

    # The part filling, one queued and one in flight (how many are held at once depends on the store's pace): a
    # bound in parts, whatever the stream's length; 96 MiB more stream may not add even two parts' worth.
    small, large = peak_for(32), peak_for(128)
    assert large < 5 * store.part_bytes, f"peak {large / MIB:.1f} MiB"
    assert large - small < 2 * store.part_bytes, f"{small / MIB:.1f} MiB for 32 MiB, {large / MIB:.1f} MiB for 128 MiB"
