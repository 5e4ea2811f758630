"""A real image registry on loopback for one test: Debian's `docker-registry` (the CNCF Distribution registry) in a
folder of its own, on a free port (the Engine trusts 127.0.0.0/8 over plain HTTP), and images pushed to it."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess

import docker

REGISTRY_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docker", "images",
                               "registry")

@contextlib.contextmanager
def local_registry(folder: str):
    """A registry of its own (docker/images/registry, the same script .ci/run and docker/dev/up use), empty; yields
    its address, `127.0.0.1:PORT`; stopped afterwards."""
    started = subprocess.run([REGISTRY_SCRIPT, "start", folder], capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    try:
        yield started.stdout.strip()
    finally:
        subprocess.run([REGISTRY_SCRIPT, "stop", folder])


def push_image(client: docker.DockerClient, registry: str, name: str, base: str, label: str) -> str:
    """An image FROM `base` with one distinguishing label, pushed to `registry` as `name` (`repo:tag`), and removed
    from the Engine under that name; returns the registry's digest for it."""
    repo, tag = name.rsplit(":", 1)
    target = f"{registry}/{repo}"
    dockerfile = f"FROM {base}\nLABEL prodg.test.build={label}\n".encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=f"{target}:{tag}", rm=True)
    for line in client.api.push(target, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
    digest = client.api.inspect_distribution(f"{target}:{tag}")["Descriptor"]["digest"]
    client.api.remove_image(f"{target}:{tag}")
    return digest
