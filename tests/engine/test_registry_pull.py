"""Images travel as production's do: from a real registry (Debian's Distribution registry on loopback), through
prodg's registry mirror setting (`NAME` pulled as `MIRROR/NAME`, tagged `NAME`). A service whose image the Engine
lacks is pulled and runs it, its container labelled and its materialisation recorded with the registry digest; a
tag moved in the registry is drift in `in_sync` and `prodg plan` (old → new digest), deployed by self-heal and by
`pull_policy: always`; a reference the registry does not hold fails with a
message naming it, and the running container keeps serving."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import dagster as dg
import pytest

import docker
from prodg_assets.contract import COMMIT_TAG, IN_SYNC, KIND_TAG, LABEL_IMAGE_DIGEST, SELF_HEAL_KIND

from ..conftest import make_testbed
from ..registry import local_registry, push_image
from ..standins.faultproxy import FaultProxy

pytestmark = pytest.mark.docker


def materialisation(result, asset: str) -> dict:
    event = next(e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset)
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_an_image_is_pulled_through_the_mirror_and_pinned_by_digest(tmp_path, docker_client, monkeypatch):
    name = f"prodgt-pull{uuid.uuid4().hex[:8]}/cache"
    bed = make_testbed(str(tmp_path), docker_client, f"prodgr{uuid.uuid4().hex[:8]}")
    with local_registry(str(tmp_path / "registry")) as registry:
        bed.env["PRODG_REGISTRY_MIRROR"] = registry
        for key, value in bed.env.items():  # the asset code reads prodg.yaml variables from the process environment
            monkeypatch.setenv(key, value)
        try:
            bed.cleanup()
            v1 = push_image(docker_client, registry, f"{name}:v1", "prodg/redis:bookworm", "one")
            with pytest.raises(docker.errors.ImageNotFound):
                docker_client.images.get(f"{name}:v1")
            bed.edit("compose/docker-compose.yml",
                     "    image: redis:7-alpine\n    container_name: ${PRODG_TEST_NAME}-redis",
                     f"    image: {name}:v1\n    container_name: ${{PRODG_TEST_NAME}}-redis")
            bed.commit("redis from the registry")
            result = bed.materialize("docker_network,secrets_env,redis")
            assert result.success
            redis = bed.containers()["redis"]
            assert redis.labels[LABEL_IMAGE_DIGEST] == v1
            assert materialisation(result, "redis")["image_digest"] == v1
            assert docker_client.images.get(f"{name}:v1").id == redis.image.id  # tagged as the seed's own name

            # The tag moves in the registry: a deploy with `missing` keeps what the Engine has, and `in_sync` shows
            # the drift (old → new digest); self-heal deploys the new digest; `always` follows every move.
            v2 = push_image(docker_client, registry, f"{name}:v1", "prodg/redis:bookworm", "two")
            assert v2 != v1
            kept = bed.materialize("redis")
            assert bed.containers()["redis"].labels[LABEL_IMAGE_DIGEST] == v1
            drift = next(c for c in kept.get_asset_check_evaluations() if c.check_name == IN_SYNC)
            assert not drift.passed
            assert drift.metadata["fields"].value == "image_digest", drift.metadata
            assert f"| image_digest | {v1} | {v2} |" in drift.metadata["drift"].value.replace("`", "")  # live | desired
            plan = subprocess.run([sys.executable, "-m", "prodg_assets.cli", "plan"], capture_output=True, text=True,
                                  env={**os.environ, **bed.env})
            assert f"image_digest: {v1} -> {v2}" in plan.stdout, plan.stdout + plan.stderr

            job = bed.defs().resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey("redis")})
            healed = job.execute_in_process(tags={COMMIT_TAG: bed.commits[-1], KIND_TAG: SELF_HEAL_KIND})
            assert healed.success
            assert materialisation(healed, "redis")["action"] == "recreated"
            assert bed.containers()["redis"].labels[LABEL_IMAGE_DIGEST] == v2

            v3 = push_image(docker_client, registry, f"{name}:v1", "prodg/redis:bookworm", "three")
            bed.edit("compose/docker-compose.yml", f"    image: {name}:v1\n",
                     f"    image: {name}:v1\n    pull_policy: always\n")
            bed.commit("redis: always pull")
            result = bed.materialize("redis")
            assert result.success
            assert materialisation(result, "redis")["action"] == "recreated"
            redis = bed.containers()["redis"]
            assert redis.labels[LABEL_IMAGE_DIGEST] == v3

            # A reference the registry does not hold: a clear failure naming it; the v2 container keeps serving.
            bed.edit("compose/docker-compose.yml", f"    image: {name}:v1\n", f"    image: {name}:v9\n")
            bed.commit("redis: a tag nobody pushed")
            failed = bed.materialize("redis")
            assert not failed.success
            message = "\n".join(str(e.event_specific_data.error) for e in failed.all_events
                                if e.event_type_value == "STEP_FAILURE")
            assert f"{name}:v9 is not in the registry mirror {registry}" in message, message
            live = bed.containers()["redis"]
            assert live.id == redis.id and live.status == "running"
            assert live.labels[LABEL_IMAGE_DIGEST] == v3
        finally:
            bed.cleanup()
            for image in docker_client.images.list(name=name):
                docker_client.images.remove(image.id, force=True)


def image_content(request) -> bool:
    """A request for the image itself — its manifest or a blob — rather than the registry's /v2/ ping."""
    return "/manifests/" in request.path or "/blobs/" in request.path


@pytest.mark.fault
def test_a_pull_from_a_registry_that_never_answers_is_stopped_at_the_pull_timeout(tmp_path, docker_client,
                                                                                  monkeypatch, measured):
    """The registry mirror accepts the connection and answers the ping, then never answers a request for the image
    (its manifest or blobs: a proxy in front of the real registry holds them): the deploy fails at
    `deploy.pull_timeout_s` naming the image, the mirror and the bound; the Engine's pull is cancelled (the held
    request released, the Engine never asks again and has no image); the running container keeps serving. Then the
    registry answers and the same deploy converges."""
    name = f"prodgt-stall{uuid.uuid4().hex[:8]}/cache"
    bed = make_testbed(str(tmp_path), docker_client, f"prodgs{uuid.uuid4().hex[:8]}")
    with local_registry(str(tmp_path / "registry")) as registry, FaultProxy(f"http://{registry}") as proxy:
        mirror = f"127.0.0.1:{proxy.port}"
        bed.env["PRODG_REGISTRY_MIRROR"] = mirror
        for key, value in bed.env.items():
            monkeypatch.setenv(key, value)
        try:
            bed.cleanup()
            # labels of this run's own: an image the Engine already holds (a cached build) would need no blob
            run = uuid.uuid4().hex[:8]
            push_image(docker_client, registry, f"{name}:v1", "prodg/redis:bookworm", f"one-{run}")
            v2 = push_image(docker_client, registry, f"{name}:v2", "prodg/redis:bookworm", f"two-{run}")
            bed.edit("compose/docker-compose.yml",
                     "    image: redis:7-alpine\n    container_name: ${PRODG_TEST_NAME}-redis",
                     f"    image: {name}:v1\n    container_name: ${{PRODG_TEST_NAME}}-redis")
            bed.edit("prodg.yaml", "  stop_timeout_s: 5\n", "  stop_timeout_s: 5\n  pull_timeout_s: 10\n")
            bed.commit("redis from the registry mirror, pulls bounded at 10 s")
            assert bed.materialize("docker_network,secrets_env,redis").success
            serving = bed.containers()["redis"]

            bed.edit("compose/docker-compose.yml", f"    image: {name}:v1\n", f"    image: {name}:v2\n")
            bed.commit("redis: v2")
            proxy.reset_log()
            proxy.stall(3600, match=image_content)
            failed = bed.materialize("redis")
            assert not failed.success, [(r.request.method, r.request.path, r.outcome) for r in proxy.requests][-4:]
            message = "\n".join(str(e.event_specific_data.error) for e in failed.all_events if e.is_step_failure)
            assert (f"redis: pulling image {name}:v2 from the registry mirror {mirror} ({mirror}/{name}:v2) did not "
                    f"finish within 10s (deploy.pull_timeout_s)") in message, message
            assert proxy.count("stalled") >= 1  # the stall was reached: the bound, not an error, ended the pull
            live = bed.containers()["redis"]
            assert live.id == serving.id and live.status == "running"
            assert redis_ping(docker_client, live.id)

            # The Engine cancelled its pull: once the registry answers again (the held request released unanswered),
            # nothing asks for the image again (a pull still going would fail or retry at once) and it never appears.
            asked = proxy.count()
            proxy.passthrough()
            for _ in range(40):
                time.sleep(0.5)
                assert proxy.count() == asked, [r.request.path for r in proxy.requests[asked:]]
                with pytest.raises(docker.errors.ImageNotFound):
                    docker_client.images.get(f"{name}:v2")

            retry = bed.materialize("redis")
            assert measured.retried(converged=retry.success
                                    and bed.containers()["redis"].labels[LABEL_IMAGE_DIGEST] == v2), retry
        finally:
            bed.cleanup()
            for image in {i.id for i in docker_client.images.list(name=name)
                          + docker_client.images.list(name=f"{mirror}/{name}")}:
                try:
                    docker_client.images.remove(image, force=True)
                except docker.errors.ImageNotFound:
                    pass


def redis_ping(client, container: str) -> bool:
    code, out = client.containers.get(container).exec_run(
        ["sh", "-c", 'redis-cli -a "$REDIS_PASSWORD" --no-auth-warning ping'])
    return code == 0 and b"PONG" in out
