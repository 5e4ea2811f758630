"""Which Engine prodg changes never depends on a Docker CLI setting (#27 item 4): with the CLI's current context
pointing at another Engine (here an address nothing answers on) and DOCKER_HOST unset, prodg still talks to the
local socket; DOCKER_HOST, when set, is what it uses. The production shape names the Engine for the daemon, the
webserver, the code location and — through dagster.yaml — every run container (DockerRunLauncher's own client)."""

from __future__ import annotations

import os
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

pytestmark = pytest.mark.docker
PYTHON = os.path.join(ROOT, ".venv", "bin", "python")


@pytest.fixture()
def cli_context_elsewhere(tmp_path):
    """A Docker CLI config whose current context is an Engine at 127.0.0.1:9 (closed)."""
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "docker-config")}
    env.pop("DOCKER_HOST", None)
    for args in (["context", "create", "elsewhere", "--docker", "host=tcp://127.0.0.1:9"],
                 ["context", "use", "elsewhere"]):
        subprocess.run(["docker", *args], env=env, check=True, capture_output=True, timeout=60)
    probe = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], env=env, capture_output=True,
                           text=True, timeout=60)
    assert probe.returncode != 0  # the CLI itself now talks to the closed address
    return env


ENGINE_VERSION = ("from prodg_assets.engine.client import DockerEngine\n"
                  "print(DockerEngine().client.version()['Version'])")


def test_prodg_talks_to_the_local_engine_whatever_the_cli_context(cli_context_elsewhere, docker_client):
    env = cli_context_elsewhere
    done = subprocess.run([PYTHON, "-c", ENGINE_VERSION], env=env, capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == docker_client.version()["Version"]
    # DOCKER_HOST, when set, is the Engine: a closed one is what the error names
    named = subprocess.run([PYTHON, "-c", ENGINE_VERSION], env={**env, "DOCKER_HOST": "tcp://127.0.0.1:9"},
                           capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert named.returncode != 0 and "127.0.0.1" in named.stderr and "port=9" in named.stderr


def test_the_production_shape_names_the_engine_for_every_dagster_process_and_run():
    with open(os.path.join(ROOT, "docker", "prod", "docker-compose.yml")) as fh:
        compose = yaml.safe_load(fh)
    for name in ("dagster-code", "dagster-webserver", "dagster-daemon"):
        assert compose["services"][name]["environment"]["DOCKER_HOST"] == \
            "${DOCKER_HOST:-unix:///var/run/docker.sock}", name
    with open(os.path.join(ROOT, "docker", "prod", "dagster.yaml")) as fh:
        launcher = yaml.safe_load(fh)["run_launcher"]["config"]
    assert "DOCKER_HOST" in launcher["env_vars"]
