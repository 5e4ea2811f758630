"""prodg-gitops: the ProDG Mainframe's desired state (git) materialised by Dagster.

`build_defs()` assembles every layer's assets and checks and the resource dict; it reads settings from the
environment when called (definitions.py calls it), never at import time.
"""

from __future__ import annotations

import os
from typing import Mapping

import dagster as dg

from .backups.assets import build_backup_assets, build_backup_resources
from .engine.docker_engine import DockerEngine
from .engine.secrets import SecretSource
from .gitops.repo import ConfigRepo
from .layers.dns import CloudflareDns, dns_only_and_pointing_at_host, dns_records
from .layers.tailnet import HeadscaleApi, build_tailnet
from .layers.host import HostShell, exposure, host_baseline, host_conforms
from .layers.network import docker_network, network_matches, no_retired_services, retired_services
from .layers.secrets import secrets_complete_and_private, secrets_env
from .layers.service_checks import PROBES, TlsSettings, build_service_check, build_tls_asset
from .layers.services import build_in_sync_check, build_service_asset
from .notifications import (
    TelegramNotifier,
    backup_failure_notifier,
    backup_success_notifier,
    deploy_failure_notifier,
)
from .schedules import build_drift_schedule
from .sensors import build_git_sensor
from .spec import ConfigInvalid, DesiredState, DirTree, load_desired_state

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def settings_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Every environment setting prodg reads, with its default (the README's settings table lists the same)."""
    return {
        "PRODG_REPO": env.get("PRODG_REPO", REPO_ROOT),
        "PRODG_REPO_URL": env.get("PRODG_REPO_URL", ""),
        "PRODG_CONFIG_SUBDIR": env.get("PRODG_CONFIG_SUBDIR", "config"),
        "PRODG_BRANCH": env.get("PRODG_BRANCH", "main"),
        "PRODG_DEPLOY_ROOT": env.get("PRODG_DEPLOY_ROOT", ""),
        "PRODG_HOST_ROOT": env.get("PRODG_HOST_ROOT", "/"),
        "PRODG_TLS_CA_FILE": env.get("PRODG_TLS_CA_FILE", ""),
        "PRODG_TLS_CONNECT": env.get("PRODG_TLS_CONNECT", ""),
        "PRODG_SENSOR_INTERVAL_S": env.get("PRODG_SENSOR_INTERVAL_S", "30"),
        "PRODG_PROBE_NETWORK": env.get("PRODG_PROBE_NETWORK", ""),
    }


def config_repo(settings: Mapping[str, str]) -> ConfigRepo:
    return ConfigRepo(repo_path=settings["PRODG_REPO"], config_subdir=settings["PRODG_CONFIG_SUBDIR"],
                      branch=settings["PRODG_BRANCH"], deploy_root=settings["PRODG_DEPLOY_ROOT"],
                      remote_url=settings["PRODG_REPO_URL"])


def build_resources(state: DesiredState, settings: Mapping[str, str]) -> dict:
    secrets = state.settings.secrets
    infisical = secrets.get("infisical") or {}
    host, _, port = settings["PRODG_TLS_CONNECT"].rpartition(":")
    telegram = state.settings.notifications.get("telegram") or {}
    headscale = state.settings.integrations.get("headscale") or {}
    return {
        # empty base_url: docker.from_env(), which honours DOCKER_HOST and DOCKER_TLS_VERIFY/DOCKER_CERT_PATH
        "docker": DockerEngine(probe_network=settings["PRODG_PROBE_NETWORK"]),
        "repo": config_repo(settings),
        "secrets": SecretSource(source=secrets.get("source", "env_file"), env_file=secrets.get("env_file", ""),
                                infisical_url=infisical.get("api_base_url", ""),
                                infisical_project_id=infisical.get("project_id", ""),
                                infisical_environment=infisical.get("environment", "prod"),
                                infisical_token_env=infisical.get("token_env", "INFISICAL_TOKEN")),
        "host": HostShell(root=settings["PRODG_HOST_ROOT"]),
        "tls": TlsSettings(ca_file=settings["PRODG_TLS_CA_FILE"], connect_host=host,
                           connect_port=int(port) if port.isdigit() else 0),
        "cloudflare": CloudflareDns(api_base_url=state.settings.dns.get("api_base_url", CloudflareDns().api_base_url),
                                    token_secret=state.settings.dns.get("api_token_secret", "CLOUDFLARE_API_TOKEN")),
        "headscale": HeadscaleApi(api_base_url=headscale.get("api_base_url", "http://127.0.0.1:8080"),
                                  api_key_secret=headscale.get("api_key_secret", "HEADSCALE_API_KEY")),
        "telegram": TelegramNotifier(api_base_url=telegram.get("api_base_url", "https://api.telegram.org"),
                                     chat_id=str(telegram.get("chat_id", "")),
                                     token_secret=telegram.get("bot_token_secret", "TELEGRAM_BOT_TOKEN"),
                                     ui_base_url=telegram.get("ui_base_url", "http://127.0.0.1:3000"),
                                     events=list(telegram.get("on", ["deploy_failure", "backup_success",
                                                                     "backup_failure"]))),
        **build_backup_resources(state),
    }


def graph_state(settings: Mapping[str, str], env: Mapping[str, str]) -> DesiredState:
    """The desired state the asset graph is drawn from: the config folder of the work tree, or — when prodg follows a
    remote (PRODG_REPO_URL) — the tracked branch's head in the local mirror, fetched first."""
    if not settings["PRODG_REPO_URL"]:
        return load_desired_state(DirTree(os.path.join(settings["PRODG_REPO"], settings["PRODG_CONFIG_SUBDIR"])), env)
    repo = config_repo(settings)
    try:
        repo.fetch()
    except Exception:
        if not repo.is_git():
            raise
    from .gitops.repo import GitTree, git

    # The newest commit that validates: an invalid push must not take the code location down (the sensor skips it).
    candidates = git(repo.path, "rev-list", "--first-parent", "--max-count=50", repo.head()).decode().split()
    first_error = None
    for sha in candidates:
        try:
            return load_desired_state(GitTree(repo.path, sha, repo.config_subdir), env,
                                      host_root=repo.config_root(sha))
        except ConfigInvalid as exc:
            first_error = first_error or exc
    raise first_error or ConfigInvalid([])


def build_defs(env: Mapping[str, str] | None = None) -> dg.Definitions:
    """Definitions for the config tree at PRODG_REPO/PRODG_CONFIG_SUBDIR: one asset per service, grouped by layer,
    the layer assets, their checks, and the resources."""
    env = os.environ if env is None else env
    settings = settings_from_env(env)
    state = graph_state(settings, env)
    assets: list = [host_baseline, docker_network, secrets_env, retired_services]
    checks: list = [host_conforms, exposure, network_matches, secrets_complete_and_private, no_retired_services]
    assets += [build_service_asset(state, spec) for spec in state.services.values()]
    checks += [build_service_check(spec) for spec in state.services.values() if spec.name in PROBES]
    checks += [build_in_sync_check(spec) for spec in state.services.values()]
    if state.settings.dns_records:
        assets.append(dns_records)
        checks.append(dns_only_and_pointing_at_host)
    if state.settings.integrations.get("headscale"):
        tailnet_asset, tailnet_check = build_tailnet(state)
        assets.append(tailnet_asset)
        checks.append(tailnet_check)
    if any(s.layer == "tls" for s in state.services.values()):
        tls_asset, tls_check = build_tls_asset(state)
        assets.append(tls_asset)
        checks.append(tls_check)
    deploy_target = dg.AssetSelection.all() - dg.AssetSelection.groups("backups")
    sensors = [build_git_sensor(deploy_target, int(settings["PRODG_SENSOR_INTERVAL_S"])), deploy_failure_notifier,
               backup_success_notifier, backup_failure_notifier]
    schedules = [build_drift_schedule(state, deploy_target)]
    backup_assets, backup_checks, backup_schedule, backup_jobs = build_backup_assets(state)
    assets += backup_assets
    checks += backup_checks
    if backup_schedule is not None:
        schedules.append(backup_schedule)
    # In-process: a deploy's steps run one after another against one Engine anyway, and a subprocess per step
    # would add seconds of Python start-up to every push-to-healthy.
    return dg.Definitions(assets=assets, asset_checks=checks, sensors=sensors, schedules=schedules,
                          jobs=backup_jobs, resources=build_resources(state, settings),
                          executor=dg.in_process_executor)
