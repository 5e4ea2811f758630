"""A big mainframe's config, generated: the test bed's config (tests/stack/config: Postgres, Redis, Hermes built from
git, Caddy, node-exporter, Prometheus) grown to a given number of services by adding small ones, deterministically.

Each added service runs the test bed's base image (prodg/base:bookworm, the Debian rootfs every stand-in image is
built on) as `nobody`, a shell that sleeps and exits on SIGTERM; they are spread round-robin over the layers' groups;
every fourth publishes a port on loopback that the Engine picks (`127.0.0.1::8080`), the others none; every fifth
depends on Postgres or Redis, so the graph has edges across layers. The service numbered `total` (`svc-150` for 150)
is the last one. Used by bench/big_mainframe.py and, without Docker, by tests/spec/test_big_config.py."""

from __future__ import annotations

import os
import shutil

from prodg_assets.desired import LAYERS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STACK = os.path.join(ROOT, "tests", "stack", "config")
HERMES = os.path.join(ROOT, "config", "hermes-api")
BED_SERVICES = 6  # tests/stack/config's services
IMAGE = "prodg/base:bookworm"


def added_name(number: int) -> str:
    return f"svc-{number:03d}"


def added_service(number: int) -> str:
    """The Compose block of the added service numbered `number` (BED_SERVICES + 1 … total)."""
    layer = LAYERS[number % len(LAYERS)]
    ports = "    ports: [127.0.0.1::8080]\n" if number % 4 == 0 else ""
    depends = f"    depends_on: [{('postgres', 'redis')[number % 2]}]\n" if number % 5 == 0 else ""
    return (f"\n  {added_name(number)}:\n"
            f"    image: {IMAGE}\n"
            f"    container_name: ${{PRODG_TEST_NAME}}-{added_name(number)}\n"
            f"    restart: unless-stopped\n"
            f"    user: \"65534\"\n"
            f"    command: [sh, -c, 'trap \"exit 0\" TERM; sleep infinity & wait']\n"
            f"    environment:\n      SERVICE_NUMBER: \"{number}\"\n"
            f"{ports}{depends}"
            f"    x-prodg: {{layer: {layer}}}\n")


def grow(config: str, total: int) -> list[str]:
    """Appends services to the test bed's Compose file under `config` until it declares `total`; their names."""
    if total < BED_SERVICES:
        raise ValueError(f"the test bed alone has {BED_SERVICES} services; asked for {total}")
    numbers = range(BED_SERVICES + 1, total + 1)
    with open(os.path.join(config, "compose", "docker-compose.yml"), "a", encoding="utf-8") as fh:
        fh.write("".join(added_service(n) for n in numbers))
    return [added_name(n) for n in numbers]


def write_config(dest: str, total: int) -> str:
    """dest/config: a copy of the test bed's config (and Hermes' build context beside it, as the test bed has it)
    grown to `total` services; its path."""
    config = os.path.join(dest, "config")
    shutil.copytree(STACK, config)
    shutil.copytree(HERMES, os.path.join(config, "hermes-api"))
    grow(config, total)
    return config
