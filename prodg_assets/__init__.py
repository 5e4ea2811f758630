"""prodg-gitops: the ProDG Mainframe's desired state (git) materialised by Dagster.

`build_defs()` merges each domain's slice of definitions (layers, backups, watch, the git sensor) and applies what
is global once: the resources and the executor. It reads settings from the environment when called
(definitions.py calls it), never at import time. Nothing below this module imports it.
"""

from __future__ import annotations

import os
from typing import Mapping

import dagster as dg

from .backups.assets.definitions import backup_definitions, build_backup_resources
from .backups.format.crypt import BackupIdentity
from .contract import BACKUP_GROUP
from .desired import ConfigInvalid, DesiredState, DirTree, load_desired_state
from .engine.client import DockerEngine
from .gitops.reload import graph_fingerprint
from .gitops.repo import ConfigRepo, GitError, GitTree, git
from .gitops.sensor import LoadedGraph, build_git_sensor
from .layers.definitions import layer_definitions, watched_checks
from .layers.dns import CloudflareDns
from .layers.host import HostShell
from .layers.service_checks import TlsProbe
from .layers.tailnet import HeadscaleApi
from .secret_source import SecretSource, secret_source_config
from .settings import EnvSettings, HeadscaleSettings
from .watch.definitions import watch_definitions
from .watch.notifications import TelegramNotifier


def config_repo(env: EnvSettings) -> ConfigRepo:
    return ConfigRepo(repo_path=env.repo, config_subdir=env.config_subdir, branch=env.branch,
                      deploy_root=env.deploy_root, remote_url=env.repo_url)


def build_resources(state: DesiredState, env: EnvSettings, environ: Mapping[str, str] | None = None) -> dict:
    """Every resource, from the environment settings and the typed prodg.yaml sections."""
    s = state.settings
    telegram = s.notifications.telegram
    headscale = s.integrations.headscale or HeadscaleSettings()
    host, port = env.tls_connect_host_port
    return {
        # empty base_url: docker.from_env(), which honours DOCKER_HOST and DOCKER_TLS_VERIFY/DOCKER_CERT_PATH
        "docker": DockerEngine(probe_network=env.probe_network, registry_mirror=env.registry_mirror),
        "repo": config_repo(env),
        "secrets": SecretSource(**secret_source_config(s.secrets)),
        "host": HostShell(root=env.host_root),
        "tls": TlsProbe(ca_file=env.tls_ca_file, connect_host=host, connect_port=port),
        "cloudflare": CloudflareDns(api_base_url=s.dns.api_base_url, token_secret=s.dns.api_token_secret),
        "headscale": HeadscaleApi(api_base_url=headscale.api_base_url, api_key_secret=headscale.api_key_secret),
        "telegram": TelegramNotifier(api_base_url=telegram.api_base_url, chat_id=telegram.chat_id,
                                     token_secret=telegram.bot_token_secret, ui_base_url=telegram.ui_base_url,
                                     events=list(telegram.on)),
        **build_backup_resources(state, environ),
        "backup_identity": BackupIdentity(identity_file=env.backup_identity),
    }


def graph_state(env: EnvSettings, environ: Mapping[str, str]) -> tuple[DesiredState, str]:
    """(desired state, commit) the asset graph is drawn from: the tracked branch's newest commit that validates —
    of the local mirror, fetched first, when prodg follows a remote (PRODG_REPO_URL) — or, when the config repo is
    not in git, its config folder (commit ""). An invalid push never takes the code location down: the sensor skips
    it and the graph stays the last valid one."""
    repo = config_repo(env)
    try:
        repo.fetch()
    except Exception:
        if not repo.is_git():
            raise
    try:
        head = repo.head() if repo.is_git() else ""
    except GitError:  # a repository without a commit yet
        head = ""
    if not head:
        return load_desired_state(DirTree(os.path.join(env.repo, env.config_subdir)), environ), ""
    candidates = git(repo.path, "rev-list", "--first-parent", "--max-count=50", head).decode().split()
    first_error = None
    for sha in candidates:
        try:
            return load_desired_state(GitTree(repo.path, sha, repo.config_subdir), environ,
                                      trees_root=repo.deployed_dir), sha
        except ConfigInvalid as exc:
            first_error = first_error or exc
    raise first_error or ConfigInvalid([])


def build_defs(environ: Mapping[str, str] | None = None) -> dg.Definitions:
    """Definitions for the config tree at PRODG_REPO/PRODG_CONFIG_SUBDIR: each domain's slice, merged, with the
    resources and the executor applied once."""
    environ = os.environ if environ is None else environ
    env = EnvSettings.from_env(environ)
    state, commit = graph_state(env, environ)
    loaded = LoadedGraph(commit, graph_fingerprint(state), environ, env.dagster_url)
    deploy_target = dg.AssetSelection.all() - dg.AssetSelection.groups(BACKUP_GROUP)
    layers = layer_definitions(state)
    merged = dg.Definitions.merge(
        layers,
        backup_definitions(state),
        watch_definitions(state, deploy_target, watched_checks(layers)),
        dg.Definitions(sensors=[build_git_sensor(deploy_target, env.sensor_interval_s, loaded)]),
    )
    # In-process: a deploy's steps run one after another against one Engine anyway, and a subprocess per step
    # would add seconds of Python start-up to every push-to-healthy.
    return dg.Definitions.merge(merged, dg.Definitions(resources=build_resources(state, env, environ),
                                                       executor=dg.in_process_executor))
