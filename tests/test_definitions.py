"""The code location: definitions.py loads the bundled config's asset graph, and Dagster's own validator accepts it."""

import os
import subprocess
import sys

import prodg_assets
from prodg_assets.desired import LAYERS
from tests.conftest import ROOT
from tests.spec.conftest import BUNDLED_ENV


def test_dagster_definitions_validate_accepts_the_code_location():
    env = {**os.environ, **BUNDLED_ENV, "DAGSTER_HOME": ""}
    env.pop("DAGSTER_HOME")
    proc = subprocess.run([sys.executable, "-m", "dagster", "definitions", "validate", "-f", "definitions.py"],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


def test_bundled_config_gives_one_asset_per_service_grouped_by_layer():
    defs = prodg_assets.build_defs({"PRODG_REPO": ROOT, **BUNDLED_ENV})
    graph = defs.resolve_asset_graph()
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    services = {"caddy": "tls", "headscale": "network", "postgres": "data_stores", "redis": "data_stores",
                "infisical": "secrets", "vaultwarden": "secrets", "minio": "data_stores", "hermes_api": "hermes",
                "prometheus": "observability", "grafana": "observability", "loki": "observability",
                "promtail": "observability", "node_exporter": "observability", "cadvisor": "observability"}
    for asset, group in services.items():
        assert groups[asset] == group
    for asset, group in {"host_baseline": "host_baseline", "docker_network": "network", "secrets_env": "secrets",
                         "tls_certificates": "tls"}.items():
        assert groups[asset] == group
    assert set(groups.values()) <= set(LAYERS)
    deps = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys}
            for k in graph.get_all_asset_keys()}
    assert {"postgres", "redis", "secrets_env"} <= deps["infisical"]
    assert {"postgres", "redis", "secrets_env"} <= deps["hermes_api"]
    assert {"node_exporter", "cadvisor", "caddy", "hermes_api", "loki", "promtail", "grafana", "headscale"} <= \
        deps["prometheus"]
    assert {"hermes_api", "grafana", "minio", "infisical", "vaultwarden", "headscale"} <= deps["caddy"]
    assert deps["docker_network"] == {"host_baseline"}
    assert deps["tls_certificates"] == {"caddy"}
    # every job resolves
    assert defs.resolve_implicit_global_asset_job_def() is not None
    for job in defs.resolve_all_job_defs():
        assert job.name


def test_every_asset_tells_the_operator_what_it_manages():
    defs = prodg_assets.build_defs({"PRODG_REPO": ROOT, **BUNDLED_ENV})
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        spec = graph.get(key)
        assert spec.description and len(spec.description) > 40, key
