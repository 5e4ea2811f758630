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
import uuid

import dagster as dg
import pytest

import docker
from prodg_assets.contract import COMMIT_TAG, IN_SYNC, KIND_TAG, LABEL_IMAGE_DIGEST, SELF_HEAL_KIND

from ..conftest import make_testbed
from ..registry import local_registry, push_image

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

