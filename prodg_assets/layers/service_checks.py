"""Health checks of the services, per layer: data stores answer authenticated, observability sees every target,
Hermes refuses the unauthenticated, every public domain serves a good certificate."""


import os
from typing import Callable

import dagster as dg
import yaml

from ..contract import TLS_ASSET, TLS_CHECK, service_pool
from ..desired import DesiredState, ServiceSpec
from ..desired.interpolate import resolve_env
from ..engine.client import DockerEngine
from ..engine.locks import service_lock
from ..gitops.repo import ConfigRepo
from ..gitops.run import state_for_run
from ..secret_source import SecretSource
from . import probes

# service name → (check name, container port, probe(spec env, (host, port), state, repo, commit) → problems)
Probe = Callable[[dict, tuple, DesiredState, ConfigRepo, str], list[str]]


def _postgres(env, addr, state, repo, commit):
    return probes.postgres_query(addr, env.get("POSTGRES_USER", "postgres"), env.get("POSTGRES_PASSWORD", ""))


def _redis(env, addr, state, repo, commit):
    return probes.redis_ping(addr, env.get("REDIS_PASSWORD", ""))


def _minio(env, addr, state, repo, commit):
    return probes.s3_list_buckets(f"http://{addr[0]}:{addr[1]}", env.get("MINIO_ROOT_USER", ""),
                                  env.get("MINIO_ROOT_PASSWORD", ""))


def _prometheus(env, addr, state, repo, commit):
    spec = state.services["prometheus"]
    mount = next((m for m in spec.volumes if m.target.endswith("prometheus.yml") and m.config_path), None)
    jobs: list[str] = []
    if mount:
        rel = mount.config_path.split("#")[0]
        tree = repo.tree(commit) if commit else None
        raw = tree.read(rel) if tree else open(os.path.join(repo.config_root(commit), rel), "rb").read()
        jobs = [j["job_name"] for j in (yaml.safe_load(raw) or {}).get("scrape_configs", [])]
    problems, _ = probes.prometheus_targets(f"http://{addr[0]}:{addr[1]}", jobs)
    return problems


def _grafana(env, addr, state, repo, commit):
    base = f"http://{addr[0]}:{addr[1]}"
    problems, _ = probes.http_get(f"{base}/api/health")
    more, resp = probes.http_get(f"{base}/api/datasources", auth=("admin", env.get("GF_SECURITY_ADMIN_PASSWORD", "")))
    names = {d.get("type") for d in (resp.json() if resp is not None and not more else [])}
    problems += more + [f"datasource {t} is not provisioned" for t in ("prometheus", "loki") if t not in names]
    return problems


def _loki(env, addr, state, repo, commit):
    return probes.http_get(f"http://{addr[0]}:{addr[1]}/ready")[0]


def _hermes(env, addr, state, repo, commit):
    base = f"http://{addr[0]}:{addr[1]}"
    problems = probes.http_get(f"{base}/health")[0]
    problems += [p + " (a request without the API token must be refused)"
                 for p in probes.http_get(f"{base}/v1/status", expect=401)[0]]
    problems += probes.http_get(f"{base}/v1/status",
                                headers={"Authorization": f"Bearer {env.get('HERMES_API_TOKEN', '')}"})[0]
    return problems


PROBES: dict[str, tuple[str, int, Probe, str]] = {
    "postgres": ("postgres_accepts_query", 5432, _postgres, "Postgres accepts an authenticated `SELECT 1`."),
    "redis": ("redis_answers_ping", 6379, _redis, "Redis answers an authenticated PING."),
    "minio": ("minio_lists_buckets", 9000, _minio, "MinIO's S3 API lists buckets with the root credentials."),
    "prometheus": ("prometheus_targets_up", 9090, _prometheus,
                   "Prometheus reports every scrape target of its prometheus.yml UP; the down ones are named."),
    "grafana": ("grafana_healthy", 3000, _grafana, "Grafana's /api/health answers and its Prometheus and Loki "
                                                   "datasources are provisioned."),
    "loki": ("loki_ready", 3100, _loki, "Loki's /ready answers."),
    "hermes-api": ("hermes_health_and_auth", 8000, _hermes,
                   "Hermes' /health answers, a request without the API token is refused, and one with it is served."),
}


def build_service_check(spec: ServiceSpec) -> dg.AssetChecksDefinition:
    name, port, probe, doc = PROBES[spec.name]

    @dg.asset_check(asset=spec.asset, name=name, description=doc, blocking=True,
                    pool=service_pool(spec.asset))  # never probes while another run swaps it
    def _check(context: dg.AssetCheckExecutionContext, docker: DockerEngine, repo: ConfigRepo,
               secrets: SecretSource) -> dg.AssetCheckResult:
        state, commit = state_for_run(context, repo)
        current = state.services[spec.name]
        with service_lock(repo.deployed_dir, state.project, spec.name, context.log.info, shared=True):
            addr = docker.endpoint(current, port)
            if addr is None:
                return dg.AssetCheckResult(passed=False, metadata={"problems": f"{spec.name} has no address: is "
                                                                               f"it running?"})
            problems = probe(resolve_env(current, secrets.values()), addr, state, repo, commit)
        return dg.AssetCheckResult(passed=not problems, metadata={
            "address": f"{addr[0]}:{addr[1]}",
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")})

    return _check


class TlsProbe(dg.ConfigurableResource):
    """How certificates are verified: `ca_file` is a PEM bundle to trust (empty: the system's), and `connect` maps
    domains to the address to handshake with (empty: Caddy's published 443)."""

    ca_file: str = ""
    connect_host: str = ""
    connect_port: int = 0


def _tls_report(docker: DockerEngine, tls: TlsProbe, state: DesiredState) -> tuple[list[str], list[dict]]:
    caddy = next((s for s in state.services.values() if s.layer == "tls"), None)
    domains = sorted({d for s in state.services.values() for d in s.public_domains})
    addr = (tls.connect_host, tls.connect_port) if tls.connect_host else (docker.endpoint(caddy, 443) if caddy
                                                                         else None)
    if addr is None:
        return ["no TLS terminator (a service of layer `tls` publishing 443) to handshake with"], []
    warn = state.settings.tls.expiry_warning_days
    problems, infos = [], []
    for domain in domains:
        p, info = probes.tls_certificate(addr, domain, tls.ca_file or None, warn)
        problems += p
        infos.append(info or {"domain": domain, "error": "; ".join(p)})
    return problems, infos


def build_tls_asset(state: DesiredState) -> tuple[dg.AssetsDefinition, dg.AssetChecksDefinition]:
    caddy = [s.asset for s in state.services.values() if s.layer == "tls"]

    @dg.asset(name=TLS_ASSET, group_name="tls", deps=caddy, kinds={"tls"})
    def tls_certificates(context: dg.AssetExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                         tls: TlsProbe) -> dg.MaterializeResult:
        """The certificate each public domain serves (issued and renewed by Caddy via ACME), read over a real TLS
        handshake with Caddy: issuer, expiry, days left."""
        current, commit = state_for_run(context, repo)
        _, infos = _tls_report(docker, tls, current)
        soonest = min((i["days_left"] for i in infos if "days_left" in i), default=-1)
        return dg.MaterializeResult(metadata={"commit": commit, "certificates": dg.MetadataValue.json(infos),
                                              "min_days_left": soonest})

    @dg.asset_check(asset=TLS_ASSET, name=TLS_CHECK, blocking=False)
    def certificates_valid(context: dg.AssetCheckExecutionContext, docker: DockerEngine, repo: ConfigRepo,
                           tls: TlsProbe) -> dg.AssetCheckResult:
        """Each public domain serves a certificate valid for it that does not expire within
        tls.expiry_warning_days."""
        current, _ = state_for_run(context, repo)
        problems, infos = _tls_report(docker, tls, current)
        return dg.AssetCheckResult(passed=not problems, metadata={
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "domains": len(infos)})

    return tls_certificates, certificates_valid
