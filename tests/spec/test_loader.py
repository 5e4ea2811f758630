"""The spec loader against the bundled config and against corrupted copies of it.

Every corrupted copy must fail with a located error `file:line: field: message` that points at the line the operator
edited; lines are computed from the edited text, never hard-coded.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from prodg_assets.desired import (
    ConfigInvalid,
    DirTree,
    SpecError,
    load_desired_state,
    sha256_hex,
    validate,
)
from prodg_assets.desired.interpolate import resolve_env
from prodg_assets.desired.yamldoc import MAX_NODES

from .conftest import (
    BUNDLED_ENV,
    COMPOSE_REL,
    CONFIG,
    LABEL,
    PRODG_REL,
    REPO,
    edit,
    find,
    line_of,
    tree,
)

C, P = COMPOSE_REL, PRODG_REL
HOST_ROOT = "/opt/prodg/config"  # where the tree lives on the Docker host; fixed so hashes compare across copies

# -- the bundled config, as the seed describes the mainframe -----------------------------------------------------------

SEED = {  # service: (image, layer, published ports)
    "caddy": ("caddy:2", "tls", {"0.0.0.0:80->80/tcp", "0.0.0.0:443->443/tcp"}),
    "headscale": ("headscale/headscale:0.23.0", "network",
                  {"0.0.0.0:8080->8080/tcp", "127.0.0.1:9090->9090/tcp", "0.0.0.0:3478->3478/udp"}),
    "postgres": ("postgres:16-alpine", "data_stores", {"127.0.0.1:5432->5432/tcp"}),
    "redis": ("redis:7-alpine", "data_stores", {"127.0.0.1:6379->6379/tcp"}),
    "infisical": ("infisical/infisical:latest-postgres", "secrets", {"127.0.0.1:8082->8080/tcp"}),
    # the seed's host port; inside, 8080: Vaultwarden runs as its own user (ROCKET_PORT), not as root on 80
    "vaultwarden": ("vaultwarden/server:latest", "secrets", {"127.0.0.1:8083->8080/tcp"}),
    "minio": ("minio/minio:latest", "data_stores", {"127.0.0.1:9000->9000/tcp", "127.0.0.1:9001->9001/tcp"}),
    "hermes-api": ("prodg/hermes-api:latest", "hermes", {"127.0.0.1:8000->8000/tcp"}),
    "prometheus": ("prom/prometheus:latest", "observability", set()),
    "grafana": ("grafana/grafana:latest", "observability", {"127.0.0.1:3000->3000/tcp"}),
    "loki": ("grafana/loki:latest", "observability", set()),
    "promtail": ("grafana/promtail:latest", "observability", set()),
    "node-exporter": ("prom/node-exporter:latest", "observability", set()),
    "cadvisor": ("gcr.io/cadvisor/cadvisor:latest", "observability", set()),
}
REQUIRED_SECRETS = {
    "POSTGRES_PASSWORD", "REDIS_PASSWORD", "INFISICAL_ENCRYPTION_KEY", "INFISICAL_AUTH_SECRET",
    "VAULTWARDEN_ADMIN_TOKEN", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "TELEGRAM_BOT_TOKEN",
    "HERMES_API_TOKEN", "B2_KEY_SECRET",
    "DAGSTER_POSTGRES_PASSWORD",  # not in the seed: prodg's own Dagster storage
    "PRODG_METRICS_TOKEN",  # not in the seed: Prometheus scraping prodg's exporter
    "DAGSTER_UI_BASICAUTH_HASH",  # was a variable with a placeholder: the console password's bcrypt hash
}


@pytest.fixture(scope="module")
def state():
    return load_desired_state(tree(CONFIG), BUNDLED_ENV, host_root=HOST_ROOT)


def test_bundled_config_validates_with_no_errors(monkeypatch):
    monkeypatch.chdir(REPO)
    config = DirTree("config")
    assert config.label == "config"
    assert validate(config, BUNDLED_ENV) == []


def test_bundled_config_has_the_seed_services_images_and_layers(state):
    assert {name: (s.image, s.layer) for name, s in state.services.items() if name in SEED} == \
        {name: (image, layer) for name, (image, layer, _) in SEED.items()}
    # beyond the seed: prodg's own Dagster deployment, as an observability layer of T1 (Docker socket) services
    extra = {name: (s.layer, s.trust_tier) for name, s in state.services.items() if name not in SEED}
    assert extra == {n: ("observability", "T1") for n in ("dagster-code", "dagster-webserver", "dagster-daemon",
                                                          "prodg-exporter")}
    assert {str(p) for p in state.services["dagster-webserver"].ports} == {"127.0.0.1:3300->3000/tcp"}


def test_bundled_config_keeps_the_control_plane_off_the_applications_network(state):
    """No application container shares a network with Dagster's gRPC or GraphQL (either launches runs as root with
    the Docker socket): dagster-code and the daemon are on prodg-dagster alone, and the webserver shares a network with
    Caddy only, which passes requests through its tailnet and basic-auth gate (tests/dev/test_first_run.py tries it
    from a live application container)."""
    on = {name: {net for net, _ in s.networks} for name, s in state.services.items()}
    assert on["dagster-code"] == on["dagster-daemon"] == {"prodg-dagster"}
    assert on["dagster-webserver"] == {"prodg-dagster", "compose_prodg-console"}
    assert {name for name, nets in on.items() if "compose_prodg-console" in nets} == {"caddy", "dagster-webserver"}
    assert {name for name, nets in on.items() if "prodg-dagster" in nets} == {"dagster-code", "dagster-daemon",
                                                                             "dagster-webserver", "prodg-exporter"}
    # prodg's exporter holds Dagster's storage password: Prometheus alone reaches it
    assert on["prodg-exporter"] == {"prodg-dagster", "compose_prodg-metrics"}
    assert {name for name, nets in on.items() if "compose_prodg-metrics" in nets} == {"prometheus", "prodg-exporter"}


def test_bundled_config_publishes_on_wildcard_addresses_only_what_host_public_ports_allows(state):
    """The exposure check's rule, on the bundled config: Caddy's admin API and Headscale's metrics (the seed's
    debts) are on loopback, so every wildcard publication is on the public allow-list."""
    wildcard = {f"{p.host_port}/{p.protocol}" for s in state.services.values() for p in s.ports if p.public}
    assert wildcard and wildcard <= set(state.settings.host.public_ports), wildcard
    assert "2019/tcp" not in wildcard and "9090/tcp" not in wildcard


@pytest.mark.parametrize("service", sorted(SEED))
def test_bundled_config_publishes_the_seed_ports_on_the_seed_host_ips(state, service):
    assert {str(p) for p in state.services[service].ports} == SEED[service][2]


def test_only_the_seed_public_services_bind_wildcard_addresses(state):
    public = {name for name, s in state.services.items() if any(p.public for p in s.ports)}
    assert public == {"caddy", "headscale"}


def test_asset_keys_replace_dashes_with_underscores(state):
    assets = {s.asset for s in state.services.values()}
    assert {"node_exporter", "hermes_api"} <= assets
    assert not any("-" in a for a in assets)
    assert len(assets) == len(state.services) == 18
    assert state.service_for_asset("hermes_api").name == "hermes-api"


def test_the_required_secrets_and_each_is_used_where_prodg_yaml_says(state):
    assert set(state.settings.required_secrets) == REQUIRED_SECRETS
    declared = state.settings.secrets.required
    for name, spec in state.services.items():
        expected = {secret for secret, decl in declared.items() if name in decl.used_by}
        assert spec.secrets_used == expected, name


def test_secrets_stay_references_in_the_resolved_environment(state):
    env = dict(state.services["postgres"].environment)
    assert env["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD}"
    infisical = dict(state.services["infisical"].environment)
    assert infisical["DB_CONNECTION_URI"] == "postgres://postgres:${POSTGRES_PASSWORD}@postgres:5432/infisical"


def test_backup_targets_and_retention(state):
    targets = {t.name: (t.method, t.service, t.prefix, t.retention_days) for t in state.settings.backup_targets}
    assert targets == {
        "postgres": ("pg_dumpall", "postgres", "postgres/", 30),
        "minio": ("s3_mirror", "minio", "minio/", 30),
        "configs": ("config_archive", None, "configs/", 90),
        "dagster": ("dagster_storage", None, "dagster/", 90),
        "redis": ("volume", "redis", "redis/", 30),
        "vaultwarden": ("volume", "vaultwarden", "vaultwarden/", 30),
        "headscale": ("volume", "headscale", "headscale/", 30),
        "grafana": ("volume", "grafana", "grafana/", 30),
        "caddy": ("volume", "caddy", "caddy/", 30),
        "secrets": ("secrets_file", None, "secrets/", 90),
    }
    captures = {t.name: (t.capture, t.path) for t in state.settings.backup_targets if t.method == "volume"}
    assert captures == {"redis": ("redis_bgsave", "/data"), "vaultwarden": ("sqlite", "/data"),
                        "headscale": ("sqlite", "/var/lib/headscale"), "grafana": ("sqlite", "/var/lib/grafana"),
                        "caddy": ("files", "/data")}
    # every service with a data folder under PRODG_DATA is backed up, except Prometheus' and Loki's time series
    # (rebuilt by scraping) and the seed's own backup targets (dumped and mirrored, not copied)
    data_services = {s.name for s in state.services.values()
                     if any(m.kind == "bind" and m.source.startswith("/opt/prodg/data/") for m in s.volumes)}
    backed_up = {t.service for t in state.settings.backup_targets if t.service}
    assert data_services - backed_up == {"prometheus", "loki"}


def test_backups_are_encrypted_to_the_listed_recipients_unless_none_is_written(state, config_copy: Path):
    b = state.settings.backups
    assert [name for name, _ in b.recipients] == ["operator", "host"] and b.encrypted
    assert all(text.startswith("age1") for _, text in b.recipients) and b.object_lock_mode == "GOVERNANCE"
    edit(config_copy, P, "  encryption:\n    recipients:\n      operator: ${BACKUP_OPERATOR_RECIPIENT}\n"
                         "      host: ${BACKUP_HOST_RECIPIENT}\n", "  encryption: none\n")
    # the secrets file is never uploaded in plaintext: with `none`, its target is an error …
    with pytest.raises(ConfigInvalid, match="the secrets file is never uploaded unencrypted"):
        load_desired_state(tree(config_copy), BUNDLED_ENV)
    # … and without it, `none` is accepted for the rest
    edit(config_copy, P, "    secrets: {method: secrets_file, prefix: secrets/, retention_days: 90}\n", "")
    plain = load_desired_state(tree(config_copy), BUNDLED_ENV).settings.backups
    assert plain.recipients == () and not plain.encrypted


def test_only_trust_tier_t1_mounts_the_docker_socket(state):
    socket_users = {name for name, s in state.services.items()
                    for m in s.volumes if m.source.endswith("docker.sock")}
    assert socket_users == {"cadvisor", "dagster-code", "dagster-webserver", "dagster-daemon"}
    assert state.services["cadvisor"].trust_tier == "T1"


def test_variables_are_interpolated_into_bind_sources_and_subnet(state):
    sources = {m.source for m in state.services["postgres"].volumes}
    assert "/opt/prodg/data/postgres" in sources
    assert state.networks["prodg-internal"].subnet == "172.19.0.0/16"
    assert dict(state.services["postgres"].networks) == {"compose_prodg-internal": ()}


def test_config_file_binds_resolve_under_host_root_with_a_content_digest(state):
    caddyfile = next(m for m in state.services["caddy"].volumes if m.target == "/etc/caddy/Caddyfile")
    assert caddyfile.kind == "bind" and caddyfile.read_only
    assert caddyfile.source == f"{HOST_ROOT}/compose/Caddyfile"
    assert caddyfile.config_path.startswith("compose/Caddyfile#")


def test_dependencies_and_deploy_ordering(state):
    assert state.services["infisical"].depends_on == ("postgres", "redis")
    assert state.services["hermes-api"].depends_on == ("postgres", "redis")
    assert state.services["promtail"].depends_on == ("loki",)
    assert "hermes-api" in state.upstream("caddy")
    assert state.services["hermes-api"].build.context == "hermes-api"


def test_redis_password_stays_out_of_the_command_line(state):
    command = state.services["redis"].command
    assert command[:2] == ("sh", "-c")
    assert '"$REDIS_PASSWORD"' in command[2]  # `$$` in Compose is a literal `$` for the container's shell


# -- corrupted copies: each case is one edit and the located error it must produce -----------------------------------

@dataclass(frozen=True)
class Case:
    id: str
    rel: str  # the file edited
    old: str | bytes
    new: str | bytes
    field: str
    fragment: str  # part of the message
    at: tuple[str | bytes, ...]  # needles (searched in order) whose last one is on the error's line
    file: str | None = None  # the file the error names, when not the edited one

    def param(self):
        return pytest.param(self, id=self.id)


CASES = [
    # Compose: keys and types
    Case("unknown-compose-key", C, "    image: redis:7-alpine\n", "    image: redis:7-alpine\n    shm_size: 1g\n",
         "services.redis.shm_size", "unknown Compose key", ("shm_size: 1g",)),
    Case("unknown-x-prodg-key", C, "      layer: hermes\n", "      layer: hermes\n      exposure: public\n",
         "services.hermes-api.x-prodg.exposure", "unknown key", ("exposure: public",)),
    Case("ports-is-a-string", C, "    ports:\n      - 127.0.0.1:6379:6379\n", "    ports: 127.0.0.1:6379:6379\n",
         "services.redis.ports", "must be a list, got a string", ("ports: 127.0.0.1:6379",)),
    Case("retries-is-a-word", C, "-h 127.0.0.1]\n      interval: 5s\n      timeout: 5s\n      retries: 10",
         "-h 127.0.0.1]\n      interval: 5s\n      timeout: 5s\n      retries: three",
         "services.postgres.healthcheck.retries", "must be a positive integer, got 'three'", ("retries: three",)),
    Case("interval-is-not-a-duration", C, "/config/]\n      interval: 10s", "/config/]\n      interval: soon",
         "services.caddy.healthcheck.interval", "must be a duration like 10s", ("interval: soon",)),
    Case("restart-policy", C, "    container_name: redis\n    restart: unless-stopped",
         "    container_name: redis\n    restart: sometimes", "services.redis.restart",
         "must be no, always, unless-stopped or on-failure[:N], got 'sometimes'", ("restart: sometimes",)),
    Case("healthcheck-test-shape", C, "test: [CMD, mc, ready, local]", "test: [mc, ready, local]",
         "services.minio.healthcheck.test", "list starting with CMD, CMD-SHELL or NONE", ("test: [mc",)),
    Case("needs-image-or-build", C, "    image: minio/minio:latest\n", "", "services.minio",
         "needs `image` or `build`", ("  minio:\n",)),
    Case("service-name-case", C, "  vaultwarden:\n", "  VaultWarden:\n", "services.VaultWarden",
         "lower-case letters", ("  VaultWarden:",)),
    Case("asset-key-collision", C, "      internal_ports: [8080]\n",
         "      internal_ports: [8080]\n  node_exporter:\n    image: prom/node-exporter:latest\n"
         "    x-prodg: {layer: observability}\n",
         "services.node_exporter", "asset key 'node_exporter' collides with service 'node-exporter'",
         ("  node_exporter:",)),
    Case("engine-labels-reserved", C, "    container_name: redis\n",
         "    container_name: redis\n    labels:\n      prodg.service: evil\n",
         "services.redis.labels.prodg.service", "set by the engine", ("prodg.service: evil",)),
    Case("env-file-relative", C, "    container_name: redis\n", "    container_name: redis\n    env_file: .env\n",
         "services.redis.env_file", "must be an absolute host path", ("env_file: .env",)),
    Case("undeclared-network", C, "/loki:/loki\n    networks: [prodg-internal]", "/loki:/loki\n    networks: [public]",
         "services.loki.networks", "network 'public' is not declared", ("networks: [public]",)),
    # ports
    Case("host-ip-localhost", C, "      - 127.0.0.1:5432:5432", "      - localhost:5432:5432",
         "services.postgres.ports[0]", "host_ip must be an IP address, got 'localhost'", ("localhost:5432",)),
    Case("host-port-out-of-range", C, "127.0.0.1:6379:6379", "127.0.0.1:70000:6379", "services.redis.ports[0]",
         "host port must be a number from 1 to 65535, got '70000'", ("70000",)),
    Case("unquoted-port-read-as-base-60", C, "      - 127.0.0.1:6379:6379", "      - 22:22", "services.redis.ports[0]",
         "publish as [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]", ("- 22:22",)),
    Case("port-protocol", C, "0.0.0.0:3478:3478/udp", "0.0.0.0:3478:3478/sctp", "services.headscale.ports[2]",
         "protocol must be tcp or udp, got 'sctp'", ("3478/sctp",)),
    Case("duplicate-host-port", C, "      - 127.0.0.1:8000:8000\n",
         "      - 127.0.0.1:8000:8000\n      - 127.0.0.1:3000:3001\n", "services.hermes-api.ports[1]",
         "host port 3000/tcp on 127.0.0.1 is already published by service 'grafana'", ("127.0.0.1:3000:3001",)),
    Case("wildcard-port-not-public", C, "127.0.0.1:6379:6379", "0.0.0.0:6379:6379", "services.redis.ports[0]",
         "6379/tcp is published on every address (0.0.0.0) but is not public", ("0.0.0.0:6379:6379",)),
    Case("wildcard-port-engine-picked", C, "127.0.0.1:6379:6379", "0.0.0.0::6379", "services.redis.ports[0]",
         "asks the Engine for a port on every address", ("0.0.0.0::6379",)),
    Case("public-port-malformed", C, "--no-auth-warning ping | grep -q PONG']\n      interval: 5s\n      timeout: 5s\n"
         "      retries: 10\n    x-prodg:\n      layer: data_stores\n",
         "--no-auth-warning ping | grep -q PONG']\n      interval: 5s\n      timeout: 5s\n"
         "      retries: 10\n    x-prodg:\n      layer: data_stores\n      public_ports: [6379]\n",
         "services.redis.x-prodg.public_ports[0]", "must look like 443/tcp, got '6379'", ("public_ports: [6379]",)),
    Case("wildcard-port-clashes-with-loopback", C, "127.0.0.1:6379:6379", "0.0.0.0:5432:6379",
         "services.redis.ports[0]", "host port 5432/tcp on 0.0.0.0 is already published by service 'postgres'",
         ("0.0.0.0:5432:6379",)),
    # secrets
    Case("undeclared-secret", C, "      ADMIN_TOKEN: ${VAULTWARDEN_ADMIN_TOKEN}\n",
         "      ADMIN_TOKEN: ${VAULTWARDEN_ADMIN_TOKEN}\n      SMTP_PASSWORD: ${SMTP_PASSWORD}\n",
         "services.vaultwarden.environment.SMTP_PASSWORD",
         "references ${SMTP_PASSWORD}, which is neither a variable of prodg.yaml nor a declared secret",
         ("SMTP_PASSWORD:",)),
    Case("literal-secret-value", C, "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}", "      POSTGRES_PASSWORD: hunter2",
         "services.postgres.environment.POSTGRES_PASSWORD", "looks like a secret written literally", ("hunter2",)),
    Case("literal-secret-under-secretish-key", C, '      SIGNUPS_ALLOWED: "false"\n',
         '      SIGNUPS_ALLOWED: "false"\n      SMTP_PASSWORD: hunter2\n',
         "services.vaultwarden.environment.SMTP_PASSWORD", "looks like a secret written literally", ("hunter2",)),
    Case("secret-in-command-line", C, '--requirepass "$$REDIS_PASSWORD"', '--requirepass "${REDIS_PASSWORD}"',
         "services.redis.command[2]", "secret ${REDIS_PASSWORD} may only be used in `environment`",
         ("command: [sh",)),
    # x-prodg and dependencies
    Case("missing-x-prodg", C, "    x-prodg:\n      layer: data_stores\n\n  infisical:", "\n  infisical:",
         "services.redis", "missing `x-prodg`", ("  redis:",)),
    Case("missing-layer", C, "    x-prodg:\n      layer: observability\n      internal_ports: [9100]",
         "    x-prodg:\n      internal_ports: [9100]", "services.node-exporter.x-prodg", "missing `layer`",
         ("  node-exporter:", "x-prodg:")),
    Case("invalid-layer", C, "      layer: data_stores\n\n  infisical:", "      layer: databases\n\n  infisical:",
         "services.redis.x-prodg.layer", "must be one of host_baseline, network, tls, data_stores, secrets, "
         "observability, hermes, backups, got 'databases'", ("layer: databases",)),
    Case("invalid-trust-tier", C, "      trust_tier: T1\n      public", "      trust_tier: root\n      public",
         "services.hermes-api.x-prodg.trust_tier", "must be one of T1, T2, T3, got 'root'", ("trust_tier: root",)),
    Case("depends-on-unknown-service", C, "depends_on: [loki]", "depends_on: [lokii]", "services.promtail.depends_on",
         "names service 'lokii', which the Compose file does not declare", ("depends_on: [lokii]",)),
    Case("depends-on-itself", C, "depends_on: [loki]", "depends_on: [loki, promtail]",
         "services.promtail.depends_on", "a service cannot depend on itself", ("depends_on: [loki, promtail]",)),
    # mounts
    Case("docker-socket-on-t2-service", C, "      - ${PRODG_DATA}/prometheus:/prometheus\n",
         "      - ${PRODG_DATA}/prometheus:/prometheus\n      - /var/run/docker.sock:/var/run/docker.sock:ro\n",
         "services.prometheus.volumes[2]",
         "mounts the Docker socket (/var/run/docker.sock); only trust tier T1 services may",
         ("  prometheus:\n", "/var/run/docker.sock")),
    Case("docker-socket-via-parent-dir", C, "      - ${PRODG_DATA}/prometheus:/prometheus\n",
         "      - ${PRODG_DATA}/prometheus:/prometheus\n      - /run:/host/run:ro\n",
         "services.prometheus.volumes[2]", "mounts the Docker socket (/run)", ("/run:/host/run",)),
    Case("docker-socket-after-demotion", C, "      trust_tier: T1\n      internal_ports: [8080]",
         "      trust_tier: T2\n      internal_ports: [8080]", "services.cadvisor.volumes[0]",
         "mounts the Docker socket", ("  cadvisor:\n", "/var/run/docker.sock")),
    Case("bind-leaves-config-tree", C, "      - ./Caddyfile:/etc/caddy/Caddyfile:ro", "      - ../../etc/passwd:/x",
         "services.caddy.volumes[0]", "path '../../etc/passwd' leaves the config tree", ("../../etc/passwd",)),
    Case("bind-outside-bind-roots", C, "      - /sys:/host/sys:ro\n",
         "      - /sys:/host/sys:ro\n      - /etc:/host/etc\n",
         "services.node-exporter.volumes[2]", "bind source '/etc' is outside the allowed roots", ("/etc:/host/etc",)),
    Case("bind-root-name-prefix-is-not-inside", C, "      - /sys:/host/sys:ro\n",
         "      - /sys:/host/sys:ro\n      - /procfs:/host/procfs\n", "services.node-exporter.volumes[2]",
         "bind source '/procfs' is outside the allowed roots", ("/procfs:",)),
    Case("bind-dotdot-out-of-a-root", C, "      - ${PRODG_DATA}/loki:/loki", "      - ${PRODG_DATA}/../../../etc:/loki",
         "services.loki.volumes[1]", "uses '..'", ("/../../../etc:/loki",)),
    Case("bind-tilde", C, "      - /sys:/host/sys:ro\n", "      - /sys:/host/sys:ro\n      - ~/.ssh:/root/.ssh\n",
         "services.node-exporter.volumes[2]", "'~' is not expanded", ("~/.ssh",)),
    Case("bind-missing-config-file", C, "./Caddyfile:", "./Caddyfile.missing:", "services.caddy.volumes[0]",
         "does not exist in the config tree (compose/Caddyfile.missing)", ("Caddyfile.missing",)),
    Case("undeclared-named-volume", C, "      - ${PRODG_DATA}/redis:/data", "      - redis-data:/data",
         "services.redis.volumes[0]", "named volume 'redis-data' is not declared", ("redis-data:/data",)),
    Case("build-context-leaves-tree", C, "      context: ../hermes-api", "      context: ../../hermes-api",
         "services.hermes-api.build.context", "leaves the config tree", ("context: ../../",)),
    # YAML itself
    Case("duplicate-yaml-key", C, "    container_name: redis\n", "    container_name: redis\n    image: redis:7\n",
         "services.redis.image", "duplicate key", ("image: redis:7\n",)),
    Case("yaml-syntax", C, "    restart: unless-stopped\n    command: [serve]",
         "    restart: unless-stopped: now\n    command: [serve]", "(document)",
         "invalid YAML: mapping values are not allowed here", ("unless-stopped: now",)),
    Case("yaml-tab-indent", C, "    container_name: loki\n", "    container_name: loki\n\tuser: root\n",
         "(document)", "invalid YAML", ("\tuser",)),
    Case("non-utf8-byte", C, b"    image: redis:7-alpine\n", b"    image: redis:7-alpine\xff\n", "(document)",
         "not UTF-8 text (byte 0xff)", (b"\xff",)),
    # prodg.yaml
    Case("prodg-unknown-key", P, "compose_file: compose/docker-compose.yml\n",
         "compose_file: compose/docker-compose.yml\ncolour: blue\n", "colour", "unknown key (allowed:", ("colour:",)),
    Case("prodg-nested-unknown-key", P, "  hostname: mainframe", "  hostnme: mainframe", "host.hostnme",
         "unknown key (allowed:", ("hostnme:",)),
    Case("prodg-missing-required-key", P, "  hostname: mainframe", "  hostnme: mainframe", "host",
         "missing required key 'hostname'", ("\nhost:\n", "host:")),
    Case("prodg-number-is-a-word", P, "  min_free_disk_gb: 40", "  min_free_disk_gb: forty", "host.min_free_disk_gb",
         "must be an integer or a number, got a string", ("min_free_disk_gb: forty",)),
    Case("prodg-integer-is-quoted", P, "  stop_timeout_s: 20", '  stop_timeout_s: "20"', "deploy.stop_timeout_s",
         "must be an integer, got a string", ("stop_timeout_s:",)),
    Case("prodg-bool-is-a-word", P, "  prune: false", "  prune: maybe", "deploy.prune",
         "must be true or false, got a string", ("prune: maybe",)),
    Case("prodg-choice", P, "  source: env_file", "  source: vault", "secrets.source",
         "must be one of env_file, infisical, got 'vault'", ("source: vault",)),
    Case("prodg-list-item-choice", P, "on: [deploy_failure,", "on: [deploy_failed,", "notifications.telegram.on[0]",
         "must be one of deploy_failure", ("on: [deploy_failed",)),
    Case("backup-target-names-no-service", P, "service: postgres, prefix", "service: pgsql, prefix",
         "backups.targets.postgres.service", "names service 'pgsql', which the Compose file does not declare",
         ("service: pgsql",)),
    Case("backup-method-needs-service", P, "{method: pg_dumpall, service: postgres, prefix",
         "{method: pg_dumpall, prefix", "backups.targets.postgres", "method pg_dumpall needs `service`",
         ("postgres: {method",)),
    Case("backup-prefixes-overlap", P, "prefix: minio/,", "prefix: postgres/minio/,", "backups.targets.postgres.prefix",
         "overlaps another target's prefix", ("postgres: {method",)),
    Case("backup-prefix-absolute", P, "prefix: configs/,", "prefix: /configs/,", "backups.targets.configs.prefix",
         "must be a relative prefix ending in '/'", ("prefix: /configs/",)),
    Case("backup-retention-zero", P, "prefix: configs/, retention_days: 90", "prefix: configs/, retention_days: 0",
         "backups.targets.configs.retention_days",
         "must be at least 1", ("retention_days: 0",)),
    Case("backup-without-encryption", P,
         "  encryption:\n    recipients:\n      operator: ${BACKUP_OPERATOR_RECIPIENT}\n"
         "      host: ${BACKUP_HOST_RECIPIENT}\n", "", "backups",
         "no `encryption`: every backup would leave this host in plaintext", ("\nbackups:\n", "backups:")),
    Case("backup-encryption-word", P, "  encryption:\n    recipients:\n      operator: ${BACKUP_OPERATOR_RECIPIENT}\n"
         "      host: ${BACKUP_HOST_RECIPIENT}\n", "  encryption: plaintext\n", "backups.encryption",
         "must be one of none, got 'plaintext'", ("encryption: plaintext",)),
    Case("backup-recipient-not-age", P, "operator: ${BACKUP_OPERATOR_RECIPIENT}", "operator: ssh-ed25519 AAAAC3",
         "backups.encryption.recipients.operator", "not an age X25519 recipient (age1…)", ("operator: ssh-ed25519",)),
    Case("backup-recipient-bad-checksum", P,
         "BACKUP_HOST_RECIPIENT: age1kczlyajjg0g5j9az7cpw42c7vme0wn9nflzm2v4y6y7yy5m8ugxs6l74au",
         "BACKUP_HOST_RECIPIENT: age1kczlyajjg0g5j9az7cpw42c7vme0wn9nflzm2v4y6y7yy5m8ugxs6l74aa",
         "backups.encryption.recipients.host", "bech32: checksum mismatch", ("host: ${BACKUP_HOST_RECIPIENT}",)),
    Case("volume-target-without-capture", P, "{method: volume, service: caddy, capture: files, path: /data,",
         "{method: volume, service: caddy, path: /data,", "backups.targets.caddy",
         "method volume needs `capture` (redis_bgsave, sqlite or files)", ("caddy: {method: volume",)),
    Case("volume-target-path-not-mounted", P, "capture: files, path: /data,", "capture: files, path: /srv,",
         "backups.targets.caddy.path",
         "'/srv' is not one of service caddy's mounts (/config, /data, /etc/caddy/Caddyfile)", ("path: /srv",)),
    Case("volume-target-needs-path", P, "capture: files, path: /data,", "capture: files,",
         "backups.targets.caddy", "capture files needs `path`: the folder of the service's data",
         ("caddy: {method: volume",)),
    Case("volume-target-unknown-capture", P, "capture: files, path: /data,", "capture: rsync, path: /data,",
         "backups.targets.caddy.capture", "must be one of redis_bgsave, sqlite, files, got 'rsync'",
         ("capture: rsync",)),
    Case("helper-image-without-sqlite", P, "capture: files, path: /data,",
         "capture: files, path: /data, helper_image: prodg/dagster-code:latest,", "backups.targets.caddy.helper_image",
         "only a target with `capture: sqlite` runs a helper image", ("caddy: {method: volume",)),
    Case("capture-on-a-dump-target", P, "{method: pg_dumpall, service: postgres, prefix",
         "{method: pg_dumpall, service: postgres, capture: files, prefix", "backups.targets.postgres.capture",
         "only a volume target takes `capture` and `path` (method is pg_dumpall)", ("postgres: {method",)),
    Case("volume-target-name-not-an-asset-name", P, "    caddy: {method: volume", "    Caddy-Data: {method: volume",
         "backups.targets.Caddy-Data", "a volume target's name becomes its asset `<name>_backup`",
         ("Caddy-Data: {method",)),
    Case("volume-target-asset-taken", P, "    caddy: {method: volume", "    config: {method: volume",
         "backups.targets.config", "its asset config_backup is another target's too; rename the target",
         ("config: {method",)),
    Case("object-lock-mode", P, "object_lock: {mode: governance}", "object_lock: {mode: legal_hold}",
         "backups.object_lock.mode", "must be one of governance, compliance, got 'legal_hold'",
         ("object_lock: {mode: legal_hold}",)),
    Case("dns-record-proxied", P, 'content: "${HOST_PUBLIC_IP}", proxied: false}\n    - {name: "*',
         'content: "${HOST_PUBLIC_IP}", proxied: true}\n    - {name: "*', "dns.records[0].proxied", "must be false",
         ("proxied: true",)),
    Case("public-port-format", P, "public_ports: [80/tcp,", "public_ports: [80/http,", "host.public_ports[0]",
         "must look like 443/tcp, got '80/http'", ("public_ports: [80/http",)),
    Case("secret-used-by-unknown-service", P, "used_by: [grafana], purpose: Grafana login",
         "used_by: [grafna], purpose: Grafana login", "secrets.required.GRAFANA_ADMIN_PASSWORD.used_by[0]",
         "names service 'grafna'", ("used_by: [grafna]",)),
    Case("variable-shadows-a-secret", P, "  DAGSTER_UI_URL: http://127.0.0.1:3300\n",
         "  DAGSTER_UI_URL: http://127.0.0.1:3300\n  HERMES_API_TOKEN: oops\n", "variables.HERMES_API_TOKEN",
         "is also declared as a secret", ("HERMES_API_TOKEN: oops",)),
    Case("variable-breaks-compose-value", P, "PRODG_NETWORK_SUBNET: 172.19.0.0/16",
         "PRODG_NETWORK_SUBNET: 172.19.0.0/33",
         "networks.prodg-internal.ipam.config[0].subnet", "must be a network in CIDR form, got '172.19.0.0/33'",
         ("- subnet:",), file=C),
    Case("compose-file-leaves-tree", P, "compose_file: compose/docker-compose.yml",
         "compose_file: ../config/compose/docker-compose.yml", "compose_file", "must be a path inside the config tree",
         ("compose_file:",)),
    # Loader bugs (see the report): these read outside the config tree instead of failing.
    Case("compose-file-absolute-path", P, "compose_file: compose/docker-compose.yml", "compose_file: /etc/hostname",
         "compose_file", "must be a path inside the config tree", ("compose_file:",)),
    Case("docker-socket-through-proc-root", C, "      - ${PRODG_DATA}/prometheus:/prometheus\n",
         "      - ${PRODG_DATA}/prometheus:/prometheus\n      - /proc/1/root/run/docker.sock:/var/run/docker.sock\n",
         "services.prometheus.volumes[2]", "", ("/proc/1/root",)),
    Case("build-context-absolute-path", C, "      context: ../hermes-api", "      context: /etc/ssl",
         "services.hermes-api.build.context", "config tree", ("context: /etc/ssl",)),
]


# Engine-picked ports gone wrong (kept out of CASES: that table is also the hand-written corpus docs/RELIABILITY.md
# counts; these run through the same test body)
PORT_PICK_CASES = [
    Case("engine-picked-port-without-host-ip", C, "      - 127.0.0.1:6379:6379", '      - ":6379"',
         "services.redis.ports[0]", "HOST_IP::CONTAINER_PORT for a port the Engine picks", ('- ":6379"',)),
    Case("host-port-zero-is-written-empty", C, "127.0.0.1:6379:6379", "127.0.0.1:0:6379", "services.redis.ports[0]",
         "host port must be a number from 1 to 65535, got '0'", ("127.0.0.1:0:6379",)),
    Case("engine-picked-port-needs-a-container-port", C, "127.0.0.1:6379:6379", "'127.0.0.1::/tcp'",
         "services.redis.ports[0]", "publish as [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTOCOL]", ("127.0.0.1::",)),
]


# The trust tiers: what only T1 may hold on the Engine, and the tailnet's grants (kept out of CASES for the same
# reason as PORT_PICK_CASES)
REACH = "reaches past the container; only trust tier T1 services may"
TRUST_CASES = [
    Case("privileged-on-t2", C, "    image: redis:7-alpine\n", "    image: redis:7-alpine\n    privileged: true\n",
         "services.redis.privileged", f"{REACH} (x-prodg.trust_tier is T2)", ("privileged: true",)),
    Case("cap-add-on-t2", C, "    image: redis:7-alpine\n", "    image: redis:7-alpine\n    cap_add: [SYS_ADMIN]\n",
         "services.redis.cap_add", REACH, ("cap_add:",)),
    Case("host-pid-on-t2", C, "    image: prom/node-exporter:latest\n",
         "    image: prom/node-exporter:latest\n    pid: host\n", "services.node-exporter.pid", REACH, ("pid: host",)),
    Case("host-network-on-t2", C, "    image: grafana/grafana:latest\n",
         "    image: grafana/grafana:latest\n    network_mode: host\n", "services.grafana.network_mode", REACH,
         ("network_mode: host",)),
    Case("devices-on-t2", C, "    image: redis:7-alpine\n", "    image: redis:7-alpine\n    devices: [/dev/sda]\n",
         "services.redis.devices", REACH, ("devices:",)),
    Case("privileges-after-demotion", C, "      trust_tier: T1\n      internal_ports: [8080]",
         "      trust_tier: T3\n      internal_ports: [8080]\n    privileged: true", "services.cadvisor.privileged",
         f"{REACH} (x-prodg.trust_tier is T3)", ("privileged: true",)),
    Case("device-outside-dev", C, "      trust_tier: T1\n      internal_ports: [8080]",
         "      trust_tier: T1\n      internal_ports: [8080]\n    devices: [/etc/shadow]",
         "services.cadvisor.devices[0]", "must be /dev/HOST[:/dev/CONTAINER][:rwm], got '/etc/shadow'",
         ("devices: [/etc/shadow]",)),
    Case("root-without-a-reason", C, "      runs_as_root: upstream's caddy:2",
         "      runs_as_root: ''\n      x: upstream's caddy:2",
         "services.caddy.x-prodg.runs_as_root", "must say why the service runs as root", ("runs_as_root: ''",)),
    Case("a-named-user-writing-a-data-folder", C, '    user: "70:70" #', '    user: postgres #',
         "services.postgres.user",
         "'postgres': a service that writes to a host folder (/opt/prodg/data/postgres) needs a numeric uid[:gid]",
         ("user: postgres",)),
    Case("data-root-outside-the-bind-roots", P, "  data_root: ${PRODG_DATA}", "  data_root: /srv/data",
         "host.data_root", "'/srv/data' is outside host.bind_roots", ("data_root: /srv/data",)),
    Case("grant-to-a-t1-service", P, "  grants: []", "  grants:\n    - {tier: T3, service: hermes-api}",
         "tailnet.grants[0].service", "hermes-api is a T1 service: only operators (T1) may reach it",
         ("service: hermes-api}",)),
    Case("grant-to-the-console-s-proxy", P, "  grants: []", "  grants:\n    - {tier: T2, service: caddy}",
         "tailnet.grants[0].service", "caddy serves T1 sites on its ports (dagster-webserver (dagster.mainframe",
         ("service: caddy}",)),
    Case("grant-to-a-loopback-service", P, "  grants: []", "  grants:\n    - {tier: T3, service: redis}",
         "tailnet.grants[0].service", "redis publishes no port beyond loopback", ("service: redis}",)),
    Case("grant-to-an-unknown-service", P, "  grants: []", "  grants:\n    - {tier: T3, service: ollama}",
         "tailnet.grants[0].service", "names service 'ollama', which the Compose file does not declare",
         ("service: ollama}",)),
    Case("grant-to-t1-tier", P, "  grants: []", "  grants:\n    - {tier: T1, service: redis}",
         "tailnet.grants[0].tier", "must be one of T2, T3, got 'T1'", ("tier: T1",)),
    Case("tailnet-without-operators", P, "  operators: [mitch]", "  operators: []", "tailnet.operators",
         "must name at least one Headscale user (T1)", ("operators: []",)),
    Case("tailnet-operator-is-a-tag", P, "  operators: [mitch]", "  operators: ['tag:t1']", "tailnet.operators[0]",
         "'tag:t1' is not a Headscale user name", ("operators: ['tag:t1']",)),
    Case("tailnet-without-headscale", P, "integrations:\n  headscale:", "old_integrations:\n  headscale:",
         "tailnet", "needs integrations.headscale", ("tailnet:\n  operators",)),
]


@pytest.mark.parametrize("case", [c.param() for c in CASES + PORT_PICK_CASES + TRUST_CASES])
def test_corrupted_config_fails_with_a_located_error(config_copy: Path, case: Case):
    edit(config_copy, case.rel, case.old, case.new)
    expected_file = case.file or case.rel
    text = (config_copy / expected_file).read_bytes()
    errors = validate(tree(config_copy), BUNDLED_ENV)
    error = find(errors, case.field, case.fragment)
    assert error.file == f"{LABEL}/{expected_file}"
    assert error.line == line_of(text, *case.at), str(error)
    assert str(error) == f"{error.file}:{error.line}: {error.field}: {error.message}"
    with pytest.raises(ConfigInvalid) as raised:
        load_desired_state(tree(config_copy), BUNDLED_ENV)
    assert error in raised.value.errors


# Wrong types for whole sections of prodg.yaml: the schema check names them; the loader must not crash afterwards.
SECTION_TYPE_CASES = [
    Case("host-is-a-string", P, "\nhost:\n", "\nhost: mainframe\nold_host:\n", "host",
         "must be a mapping, got a string", ("host: mainframe",)),
    Case("host-public-ports-is-a-number", P, "  public_ports: [80/tcp, 443/tcp, 8080/tcp, 3478/udp]",
         "  public_ports: 443", "host.public_ports", "must be a list, got an integer", ("public_ports: 443",)),
    Case("dns-is-a-list", P, "\ndns:\n", "\ndns: [cloudflare]\nold_dns:\n", "dns", "must be a mapping, got a list",
         ("dns: [cloudflare]",)),
    Case("dns-records-is-a-number", P, "  records:\n", "  records: 2\n  old_records:\n", "dns.records",
         "must be a list, got an integer", ("records: 2",)),
    Case("secrets-is-a-string", P, "\nsecrets:\n", "\nsecrets: env_file\nold_secrets:\n", "secrets",
         "must be a mapping, got a string", ("secrets: env_file",)),
    Case("secrets-required-is-a-list", P, "  required:\n", "  required: [POSTGRES_PASSWORD]\n  old_required:\n",
         "secrets.required", "must be a mapping, got a list", ("required: [POSTGRES_PASSWORD]",)),
    Case("secret-used-by-is-a-string", P, "used_by: [grafana], purpose: Grafana login",
         "used_by: grafana, purpose: Grafana login", "secrets.required.GRAFANA_ADMIN_PASSWORD.used_by",
         "must be a list, got a string", ("used_by: grafana,",)),
    Case("secret-used-by-holds-a-mapping", P, "used_by: [minio]", "used_by: [{minio: 1}]",
         "secrets.required.MINIO_ROOT_PASSWORD.used_by[0]", "must be a string, got a mapping", ("used_by: [{minio",)),
    Case("backups-is-a-number", P, "\nbackups:\n", "\nbackups: 3\nold_backups:\n", "backups",
         "must be a mapping, got an integer", ("backups: 3",)),
    Case("backup-targets-is-a-list", P, "  targets:\n", "  targets: [postgres]\n  old_targets:\n", "backups.targets",
         "must be a mapping, got a list", ("targets: [postgres]",)),
    Case("backup-target-service-is-a-list", P, "service: minio, prefix", "service: [minio], prefix",
         "backups.targets.minio.service", "must be a string, got a list", ("service: [minio]",)),
]


@pytest.mark.parametrize("case", [c.param() for c in SECTION_TYPE_CASES])
def test_wrong_section_type_in_prodg_yaml_is_located_not_a_crash(config_copy: Path, case: Case):
    test_corrupted_config_fails_with_a_located_error(config_copy, case)


def test_dependency_cycle_is_reported_at_a_service_of_the_cycle(config_copy: Path):
    text = edit(config_copy, C, "    command: [-config.file=/etc/loki/loki.yml]\n",
                "    command: [-config.file=/etc/loki/loki.yml]\n    depends_on: [promtail]\n").decode()
    errors = [e for e in validate(tree(config_copy), BUNDLED_ENV) if "dependency cycle" in e.message]
    assert len(errors) == 1, errors
    error = errors[0]
    assert error.message in ("dependency cycle: loki -> promtail -> loki",
                             "dependency cycle: promtail -> loki -> promtail")
    service = error.field.removeprefix("services.")
    assert service in ("loki", "promtail")
    assert error.line == line_of(text, f"\n  {service}:\n", f"{service}:")


def test_longer_cycle_through_x_prodg_after_is_reported(config_copy: Path):
    # caddy is deployed after hermes-api; making hermes-api wait for caddy closes the loop.
    edit(config_copy, C, "      layer: hermes\n", "      layer: hermes\n      after: [caddy]\n")
    errors = [e for e in validate(tree(config_copy), BUNDLED_ENV) if "dependency cycle" in e.message]
    assert len(errors) == 1 and {"caddy", "hermes-api"} <= set(errors[0].message.split()), errors


def test_compose_file_that_is_a_list(config_copy: Path):
    (config_copy / C).write_text("- caddy\n- postgres\n")
    assert validate(tree(config_copy), BUNDLED_ENV) == [
        SpecError(f"{LABEL}/{C}", 1, "(document)", "must be a mapping, got a list")]


def test_compose_file_without_services(config_copy: Path):
    (config_copy / C).write_text("name: compose\n# nothing else\n")
    error = find(validate(tree(config_copy), BUNDLED_ENV), "services", "must be a mapping of at least one service")
    assert error.file == f"{LABEL}/{C}"


def test_unknown_top_level_compose_key(config_copy: Path):
    text = edit(config_copy, C, "name: compose\n", "name: compose\nsecrets: {}\nx-anchors: {}\n")
    errors = validate(tree(config_copy), BUNDLED_ENV)
    assert errors == [SpecError(f"{LABEL}/{C}", line_of(text, "secrets: {}"), "secrets",
                                "unknown top-level Compose key (allowed: name, networks, services, volumes, x-*)")]


def test_file_over_one_mib_is_refused_without_parsing(config_copy: Path):
    with open(config_copy / C, "a") as fh:
        fh.write(("# " + "x" * 1022 + "\n") * 1100)
    errors = validate(tree(config_copy), BUNDLED_ENV)
    assert len(errors) == 1
    assert (errors[0].file, errors[0].line, errors[0].field) == (f"{LABEL}/{C}", 1, "(document)")
    assert "larger than 1048576" in errors[0].message


BILLION_LAUGHS = "x-lol: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"x-lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 10))


# -- Engine-picked host ports (Compose's HOST_IP::CONTAINER_PORT): valid, port 0, and never a clash -------------------
ENGINE_PICKED_PORTS = {  # id: ((old, new) edits of the compose file, service, its ports as str)
    "short form": ((("127.0.0.1:6379:6379", "127.0.0.1::6379"),), "redis", {"127.0.0.1:0->6379/tcp"}),
    "ipv6 host ip": ((("127.0.0.1:6379:6379", "'[::1]::6379'"),), "redis", {"[::1]:0->6379/tcp"}),
    "udp": ((("127.0.0.1:6379:6379", "127.0.0.1::6379/udp"),), "redis", {"127.0.0.1:0->6379/udp"}),
    "long form, published empty": ((("127.0.0.1:6379:6379", '{target: 6379, host_ip: 127.0.0.1, published: ""}'),),
                                   "redis", {"127.0.0.1:0->6379/tcp"}),
    # two services, both Engine-picked on the same address: each gets its own port, so no "already published"
    "two on one address": ((("127.0.0.1:6379:6379", "127.0.0.1::6379"), ("127.0.0.1:5432:5432", "127.0.0.1::5432")),
                           "postgres", {"127.0.0.1:0->5432/tcp"}),
}


@pytest.mark.parametrize("edits, service, ports", ENGINE_PICKED_PORTS.values(), ids=ENGINE_PICKED_PORTS.keys())
def test_engine_picked_host_ports_are_port_zero_and_never_clash(config_copy: Path, edits, service: str, ports):
    for old, new in edits:
        edit(config_copy, C, old, new)
    assert validate(tree(config_copy), BUNDLED_ENV) == []
    state = load_desired_state(tree(config_copy), BUNDLED_ENV, host_root=HOST_ROOT)
    assert {str(p) for p in state.services[service].ports} == ports
    assert all(p.engine_picked and p.host_port == 0 for p in state.services[service].ports)


@pytest.mark.parametrize("rel", [C, P])
def test_yaml_bomb_is_refused_in_bounded_time(config_copy: Path, rel: str, built_nodes):
    with open(config_copy / rel, "a") as fh:
        fh.write(BILLION_LAUGHS)
    errors = validate(tree(config_copy), BUNDLED_ENV)
    assert built_nodes() == MAX_NODES + 1  # bounded work: the builder stopped at its node limit (not 10^10 values)
    error = find(errors, "(document)", "a YAML bomb?")
    assert error.file == f"{LABEL}/{rel}"


@pytest.mark.parametrize("opener", ["[", "{"])
def test_ten_thousand_nested_brackets_do_not_crash(config_copy: Path, opener: str):
    (config_copy / C).write_text("services: " + opener * 10_000 + "\n")
    errors = validate(tree(config_copy), BUNDLED_ENV)
    assert errors and all(e.file == f"{LABEL}/{C}" and e.line >= 1 for e in errors)


def test_deep_but_bounded_nesting_names_the_limit(config_copy: Path):
    (config_copy / C).write_text("services:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 80)))
    error = find(validate(tree(config_copy), BUNDLED_ENV), "(document)", "nested deeper than 64 levels")
    assert error.file == f"{LABEL}/{C}"


def test_missing_prodg_yaml(config_copy: Path):
    (config_copy / P).unlink()
    assert validate(tree(config_copy), BUNDLED_ENV) == [SpecError(f"{LABEL}/{P}", 1, "(document)", "file not found")]


def test_missing_compose_file(config_copy: Path):
    (config_copy / C).unlink()
    assert validate(tree(config_copy), BUNDLED_ENV) == [SpecError(f"{LABEL}/{C}", 1, "(document)", "file not found")]


def test_empty_prodg_yaml_names_its_required_sections(config_copy: Path):
    (config_copy / P).write_text("# nothing yet\n")
    errors = validate(tree(config_copy), BUNDLED_ENV)
    for section in ("host", "secrets"):
        find(errors, "(document)", f"missing required key '{section}'")


def test_literal_secret_is_never_echoed_in_errors(config_copy: Path):
    edit(config_copy, C, "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}", "      POSTGRES_PASSWORD: hunter2")
    errors = validate(tree(config_copy), BUNDLED_ENV)
    assert errors and not any("hunter2" in str(e) for e in errors)


def test_literal_secret_in_list_form_environment(config_copy: Path):
    # redis has a one-entry environment, so the whole mapping becomes a one-item list
    text = edit(config_copy, C, "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                "      - REDIS_PASSWORD=hunter2\n").decode()
    error = find(validate(tree(config_copy), BUNDLED_ENV), "services.redis.environment[0]",
                 "looks like a secret written")
    assert error.line == line_of(text, "REDIS_PASSWORD=hunter2")


def test_errors_come_sorted_and_all_at_once(config_copy: Path):
    edit(config_copy, C, "      - 127.0.0.1:5432:5432", "      - localhost:5432:5432")
    edit(config_copy, C, "depends_on: [loki]", "depends_on: [lokii]")
    edit(config_copy, P, "  prune: false", "  prune: maybe")
    errors = validate(tree(config_copy), BUNDLED_ENV)
    assert len(errors) == 3 and errors == sorted(errors)
    with pytest.raises(ConfigInvalid) as raised:
        load_desired_state(tree(config_copy), BUNDLED_ENV)
    assert raised.value.errors == errors
    assert str(raised.value).splitlines() == [str(e) for e in errors]


def test_bind_through_a_symlink_leaving_the_tree_is_refused(config_copy: Path):
    # A symlink committed to the config repo must not smuggle a host folder into a container.
    os.symlink("/etc/ssl", config_copy / "compose" / "certs")
    text = edit(config_copy, C, "./Caddyfile:", "./certs:")
    error = find(validate(tree(config_copy), BUNDLED_ENV), "services.caddy.volumes[0]", "")
    assert error.line == line_of(text, "./certs:")


def test_unbraced_secret_reference_is_a_reference_not_a_literal(config_copy: Path):
    # Compose (and the interpolator) accept $NAME as well as ${NAME}.
    edit(config_copy, C, "      POSTGRES_PASSWORD: ${POSTGRES_PASSWORD}", "      POSTGRES_PASSWORD: $POSTGRES_PASSWORD")
    assert validate(tree(config_copy), BUNDLED_ENV) == []
    state = load_desired_state(tree(config_copy), BUNDLED_ENV)
    assert dict(state.services["postgres"].environment)["POSTGRES_PASSWORD"] == "${POSTGRES_PASSWORD}"


def test_escaped_dollar_never_becomes_a_secret_reference(config_copy: Path):
    # `$$` is a literal `$`: `$${POSTGRES_PASSWORD}` is the text ${POSTGRES_PASSWORD}, not the secret's value.
    text = edit(config_copy, C, "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n      TEMPLATE: $${POSTGRES_PASSWORD}\n")
    assert "      TEMPLATE: $${POSTGRES_PASSWORD}\n" in text.decode()
    assert validate(tree(config_copy), BUNDLED_ENV) == []
    state = load_desired_state(tree(config_copy), BUNDLED_ENV)
    assert state.services["redis"].secrets_used == {"REDIS_PASSWORD"}
    resolved = resolve_env(state.services["redis"], {"POSTGRES_PASSWORD": "pg-value", "REDIS_PASSWORD": "r-value"})
    assert resolved["TEMPLATE"] == "${POSTGRES_PASSWORD}"  # the text, as the container gets it


# -- variables -----------------------------------------------------------------------------------------------------

def test_environment_overrides_a_prodg_yaml_variable(tmp_path: Path):
    data = tmp_path / "data"
    env = {**BUNDLED_ENV, "PRODG_DATA": str(data)}
    assert validate(tree(CONFIG), env) == []  # bind_roots follow the variable too
    state = load_desired_state(tree(CONFIG), env)
    assert f"{data}/postgres" in {m.source for m in state.services["postgres"].volumes}
    assert state.variables["PRODG_DATA"] == str(data)
    assert state.settings.tls.storage == f"{data}/caddy"


def test_environment_does_not_leak_undeclared_variables(config_copy: Path):
    text = edit(config_copy, C, '      SIGNUPS_ALLOWED: "false"\n',
                '      SIGNUPS_ALLOWED: "false"\n      OWNER: ${HOME}\n').decode()
    errors = validate(tree(config_copy), {"HOME": "/root"})
    error = find(errors, "services.vaultwarden.environment.OWNER", "references ${HOME}")
    assert error.line == line_of(text, "OWNER:")


def test_compose_default_syntax_and_dollar_escape(config_copy: Path):
    edit(config_copy, C, '      SIGNUPS_ALLOWED: "false"\n',
         '      SIGNUPS_ALLOWED: "false"\n      LOG_LEVEL: ${LOG_LEVEL:-info}\n      PRICE: $$5\n')
    state = load_desired_state(tree(config_copy), BUNDLED_ENV)
    # `$$` stays escaped in the spec; the container gets `$` (the engine resolves secrets and escapes in one pass)
    env = resolve_env(state.services["vaultwarden"], {})
    assert (env["LOG_LEVEL"], env["PRICE"]) == ("info", "$5")


def test_config_binds_point_into_the_tree_folder_by_default():
    state = load_desired_state(tree(CONFIG), BUNDLED_ENV)
    caddyfile = next(m for m in state.services["caddy"].volumes if m.target == "/etc/caddy/Caddyfile")
    assert caddyfile.source == os.path.join(str(CONFIG), "compose", "Caddyfile")


# -- spec hash: drift detection must see every change that matters, and only those ---------------------------------

def hashes(root: Path, secret_values: dict[str, str] | None = None) -> dict[str, str]:
    state = load_desired_state(tree(root), BUNDLED_ENV, host_root=HOST_ROOT)
    return {name: spec.spec_hash(secret_values) for name, spec in state.services.items()}


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    assert before.keys() == after.keys()
    return {name for name in before if before[name] != after[name]}


def test_spec_hash_is_stable_across_loads_and_tree_locations(config_copy: Path):
    first = hashes(CONFIG)
    assert hashes(CONFIG) == first
    assert hashes(config_copy) == first  # same content elsewhere on disk: nothing to recreate
    assert all(re.fullmatch(r"[0-9a-f]{32}", h) for h in first.values())
    assert len(set(first.values())) == len(first) == 18


def test_spec_hash_ignores_comments_layout_and_environment_form(config_copy: Path):
    before = hashes(config_copy)
    edit(config_copy, C, "    container_name: vaultwarden\n    restart: unless-stopped\n",
         "    # reordered, commented\n    restart: unless-stopped\n    container_name: vaultwarden\n")
    edit(config_copy, C, '      ADMIN_TOKEN: ${VAULTWARDEN_ADMIN_TOKEN}\n'
                         '      DOMAIN: https://vault.mainframe.prodg.studio\n'
                         '      SIGNUPS_ALLOWED: "false"\n'
                         '      ROCKET_PORT: "8080"\n',
         '      - SIGNUPS_ALLOWED=false\n      - ADMIN_TOKEN=${VAULTWARDEN_ADMIN_TOKEN}\n'
         '      - ROCKET_PORT=8080\n      - DOMAIN=https://vault.mainframe.prodg.studio\n')
    assert changed(before, hashes(config_copy)) == set()


def test_spec_hash_changes_only_for_the_service_whose_environment_changed(config_copy: Path):
    before = hashes(config_copy)
    edit(config_copy, C, 'SIGNUPS_ALLOWED: "false"', 'SIGNUPS_ALLOWED: "true"')
    assert changed(before, hashes(config_copy)) == {"vaultwarden"}


def test_spec_hash_changes_only_for_the_service_whose_image_changed(config_copy: Path):
    before = hashes(config_copy)
    edit(config_copy, C, "image: redis:7-alpine", "image: redis:7.2-alpine")
    assert changed(before, hashes(config_copy)) == {"redis"}


def test_variable_change_reaches_every_service_using_it(config_copy: Path):
    before = hashes(config_copy)
    edit(config_copy, P, "MINIO_ROOT_USER: prodg-admin", "MINIO_ROOT_USER: root-admin")
    assert changed(before, hashes(config_copy)) == {"minio"}


def test_secret_value_changes_the_hash_of_its_users_without_revealing_it():
    before = hashes(CONFIG, {"POSTGRES_PASSWORD": "hunter2"})
    after = hashes(CONFIG, {"POSTGRES_PASSWORD": "correct horse battery staple"})
    assert changed(before, after) == {"postgres", "infisical", "hermes-api"}
    for h in (*before.values(), *after.values()):
        assert "hunter2" not in h and "correct horse" not in h
        assert h not in (sha256_hex("hunter2"), sha256_hex("hunter2")[:32])


def test_secrets_no_service_uses_do_not_change_any_hash():
    assert hashes(CONFIG, {"B2_KEY_SECRET": "x", "UNRELATED": "y"}) == hashes(CONFIG)


def test_bind_mounted_config_file_content_changes_that_service_only(config_copy: Path):
    before = hashes(config_copy)
    with open(config_copy / "compose" / "Caddyfile", "a") as fh:
        fh.write("\n# one more line\n")
    assert changed(before, hashes(config_copy)) == {"caddy"}


def test_new_file_in_a_bind_mounted_folder_changes_that_service_only(config_copy: Path):
    before = hashes(config_copy)
    dashboards = config_copy / "compose" / "grafana" / "provisioning" / "dashboards"
    dashboards.mkdir(parents=True, exist_ok=True)
    (dashboards / "host.yml").write_text("apiVersion: 1\n")
    assert changed(before, hashes(config_copy)) == {"grafana"}


# -- never silent: Telegram on needs a chat id and a token; the watch intervals are ones the scheduler runs -----------
@pytest.mark.parametrize("chat", ["0", ""])
def test_telegram_on_without_a_chat_id_is_a_located_error(config_copy: Path, chat: str):
    text = (config_copy / P).read_text()
    error = find(validate(tree(config_copy), {"TELEGRAM_CHAT_ID": chat}), "notifications.telegram.chat_id",
                 "Telegram is on")
    assert (error.line, repr(chat)) == (line_of(text, "telegram:", "chat_id:"), error.message.split("chat id is ")[1]
                                        .split(":")[0])
    edit(config_copy, P, "    on: [deploy_failure, backup_success, backup_failure, backup_missed, check]\n",
         "    on: []\n")
    assert validate(tree(config_copy), {"TELEGRAM_CHAT_ID": chat}) == []  # Telegram off, on purpose
    state = load_desired_state(tree(config_copy), {"TELEGRAM_CHAT_ID": chat})
    assert state.settings.notifications.telegram.on == ()


def test_telegram_on_with_an_undeclared_token_secret_is_a_located_error(config_copy: Path):
    text = edit(config_copy, P, "    bot_token_secret: TELEGRAM_BOT_TOKEN\n",
                "    bot_token_secret: TELEGRAM_TOKEN\n").decode()
    error = find(validate(tree(config_copy), BUNDLED_ENV), "notifications.telegram.bot_token_secret",
                 "'TELEGRAM_TOKEN' is not declared in secrets.required")
    assert error.line == line_of(text, "bot_token_secret:")


@pytest.mark.parametrize("value, fragment", [
    ("7m", "minutes that divide an hour"), ("90m", "minutes that divide an hour"), ("5h", "hours that divide a day"),
    ("2d", "or 1d"), ("0m", "got '0m'"), ("soon", "got 'soon'")])
def test_a_check_interval_the_scheduler_cannot_run_is_a_located_error(config_copy: Path, value: str, fragment: str):
    text = edit(config_copy, P, "    health: 5m", f"    health: {value}").decode()
    error = find(validate(tree(config_copy), BUNDLED_ENV), "watch.every.health", fragment)
    assert error.line == line_of(text, "watch:", "health:")


@pytest.mark.parametrize("old, new, field, fragment", [
    ('  backups_due_by: "04:00"', '  backups_due_by: "02:30"', "watch.backups_due_by", "after the backups' own hour"),
    ('  backups_due_by: "04:00"', '  backups_due_by: "4 am"', "watch.backups_due_by", "'HH:MM'"),
    ("  remind_every: 6h", "  remind_every: often", "watch.remind_every", "a duration such as"),
    ("  flapping: {changes: 4, within: 1h}", "  flapping: {changes: 1, within: 1h}", "watch.flapping.changes",
     "2 or more"),
])
def test_watch_settings_are_validated(config_copy: Path, old: str, new: str, field: str, fragment: str):
    edit(config_copy, P, old, new)
    find(validate(tree(config_copy), BUNDLED_ENV), field, fragment)


def test_watch_defaults_and_schedules(config_copy: Path):
    edit(config_copy, P, "    health: 5m", "    health: 10m")
    watch = load_desired_state(tree(config_copy), BUNDLED_ENV).settings.watch
    assert watch.interval("health") == "10m" and watch.interval("tls") == "1d"
    assert (watch.remind_minutes, watch.flapping_changes, watch.flapping_minutes, watch.due_hour_minute) == \
        (360, 4, 60, (4, 0))
