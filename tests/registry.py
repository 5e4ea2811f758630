"""A real image registry on loopback: Debian's `docker-registry` (the CNCF Distribution registry), started for a test
in a folder of its own, on a free port (the Engine trusts 127.0.0.0/8 over plain HTTP)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import time

import docker
import requests

from .dagster_dev import free_port, stop

REGISTRY_BIN = shutil.which("docker-registry") or "/usr/bin/docker-registry"


@contextlib.contextmanager
def local_registry(folder: str):
    """Yields the registry's address, `127.0.0.1:PORT`; stopped afterwards (its storage is in `folder`)."""
    os.makedirs(folder, exist_ok=True)
    port = free_port()
    config = os.path.join(folder, "config.yml")
    with open(config, "w") as fh:
        fh.write(f"version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {folder}/storage}}\n"
                 f"  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n")
    log = open(os.path.join(folder, "registry.log"), "w")
    proc = subprocess.Popen([REGISTRY_BIN, "serve", config], stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        for _ in range(100):  # a bound in attempts
            try:
                if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, open(os.path.join(folder, "registry.log")).read()
            time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


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
