"""Secrets layer: the secrets source the services' `${NAME}` references resolve from (Infisical and Vaultwarden are
service assets of this group)."""


import dagster as dg

from ..contract import SECRETS_ASSET, SECRETS_CHECK
from ..desired import DirTree, sha256_hex
from ..gitops.repo import ConfigRepo
from ..gitops.run import state_for_run
from ..secret_source import SecretSource, SecretSourceUnavailable
from ..settings import secret_format_problem


@dg.asset(name=SECRETS_ASSET, group_name="secrets", kinds={"secrets"})
def secrets_env(context: dg.AssetExecutionContext, secrets: SecretSource, repo: ConfigRepo) -> dg.MaterializeResult:
    """The secrets source (prodg.yaml `secrets:` — the host's env file, or Infisical): which required keys
    it holds. Only key names and a fingerprint of the whole set are recorded, never a value; a changed fingerprint
    is what makes dependent services pick up rotated secrets."""
    state, commit = state_for_run(context, repo)
    values = secrets.values()
    required = list(state.settings.required_secrets)
    missing = [k for k in required if not values.get(k)]
    fingerprint = sha256_hex("\0".join(f"{k}={sha256_hex(values.get(k, ''))}" for k in required))[:16]
    return dg.MaterializeResult(metadata={
        "commit": commit,
        "source": secrets.source,
        "keys_present": len(required) - len(missing),
        "keys_missing": ", ".join(missing) or "none",
        "fingerprint": fingerprint,
    })


@dg.asset_check(asset=SECRETS_ASSET, name=SECRETS_CHECK, blocking=True)
def secrets_complete_and_private(context: dg.AssetCheckExecutionContext, secrets: SecretSource,
                                 repo: ConfigRepo) -> dg.AssetCheckResult:
    """Every required key is present and non-empty, and of its declared format (a bcrypt hash where `format:
    bcrypt`); the env file is mode 600 and owned by root; and no secret value appears anywhere in the config repo."""
    state, commit = state_for_run(context, repo)
    try:
        values = secrets.values()
    except SecretSourceUnavailable as exc:
        return dg.AssetCheckResult(passed=False, metadata={
            "problems": dg.MetadataValue.md(f"- the secrets source could not be read: {exc}")})
    problems = [f"{k} is missing or empty" for k in state.settings.required_secrets if not values.get(k)]
    problems += [p for k, decl in state.settings.secrets.required.items() if values.get(k)
                 for p in [secret_format_problem(k, values[k], decl.format)] if p]
    if secrets.source == "env_file":
        facts = secrets.env_file_facts()
        if not facts.exists:
            problems.append(f"{facts.path} does not exist")
        else:
            if facts.mode != 0o600:
                problems.append(f"{facts.path} has mode {facts.mode:o}, expected 600")
            if facts.owner_uid != 0:
                problems.append(f"{facts.path} is owned by uid {facts.owner_uid}, expected root")
    tree = repo.tree(commit) if commit else DirTree(repo.config_root(commit))
    leaks = []
    for rel in tree.files_under("."):
        text = tree.read(rel) or b""
        for name, value in values.items():
            if value and len(value) >= 6 and value.encode() in text:
                leaks.append(f"{rel} contains the value of {name}")
    problems += leaks
    return dg.AssetCheckResult(passed=not problems, metadata={
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")})
