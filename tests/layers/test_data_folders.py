"""No root where the image allows: the bed's Postgres and Redis run as their images' own users (70; 999:1000, as
in the mainframe's config), their data folders made for them before the first start; a service that wrote its data
as root and moves to its own user finds the folder handed over and its data still there."""

import os

import pytest

from tests.conftest import TEST_SECRETS


@pytest.fixture
def bed(own_bed):
    os.environ.update(own_bed.env)
    return own_bed


def process_uids(container) -> set[int]:
    top = container.client.api.top(container.id, ps_args="-o uid,pid")
    return {int(p[0]) for p in top["Processes"]}


def owner(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_uid, st.st_gid


def everything_under(top: str) -> set[tuple[int, int]]:
    owners = {owner(top)}
    for folder, dirs, files in os.walk(top):
        owners |= {os.lstat(os.path.join(folder, n))[4:6] for n in dirs + files}
    return owners


def redis_cli(container, *args: str) -> str:
    code, out = container.exec_run(["redis-cli", "-a", TEST_SECRETS["REDIS_PASSWORD"], "--no-auth-warning", *args])
    assert code == 0, out
    return out.decode().strip()


def test_data_stores_run_as_their_own_users_in_folders_made_for_them(bed):
    data = bed.env["PRODG_DATA"]
    assert not os.path.exists(os.path.join(data, "postgres"))
    assert bed.materialize(selection="docker_network,postgres,redis").success
    containers = bed.containers()
    assert process_uids(containers["postgres"]) == {70}
    assert process_uids(containers["redis"]) == {999}
    assert everything_under(os.path.join(data, "postgres")) == {(70, 70)}  # initdb wrote it all as postgres
    assert owner(os.path.join(data, "redis")) == (999, 1000)


def test_a_service_moving_from_root_to_its_own_user_finds_its_data_handed_over(bed):
    data = os.path.join(bed.env["PRODG_DATA"], "redis")
    bed.edit("compose/docker-compose.yml", '    user: "999:1000"\n', "")
    bed.commit("redis: as root, as the seed ran it")
    assert bed.materialize(selection="docker_network,redis").success
    redis = bed.containers()["redis"]
    assert process_uids(redis) == {0}
    assert redis_cli(redis, "SET", "kept", "across the move") == "OK"
    redis_cli(redis, "BGREWRITEAOF")
    assert (0, 0) in everything_under(data)  # what root wrote

    bed.edit("compose/docker-compose.yml", "    restart: unless-stopped\n    command: [sh, -c, 'exec redis-server",
             "    restart: unless-stopped\n    user: \"999:1000\"\n    command: [sh, -c, 'exec redis-server")
    bed.commit("redis: as its own user")
    result = bed.materialize(selection="docker_network,redis")
    assert result.success
    redis = bed.containers()["redis"]
    assert process_uids(redis) == {999}
    assert everything_under(data) == {(999, 1000)}
    assert redis_cli(redis, "GET", "kept") == "across the move"
