"""Secrets: the source (the env file on the host, or Infisical's API read with its SDK — one resource),
the env-file parser, and the one redactor every log line, exception and metadata value passes through."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Mapping

import dagster as dg

from .desired.model import sha256_hex
from .settings import SecretsSettings


@dataclass(frozen=True)
class EnvFileFacts:
    path: str
    exists: bool
    mode: int = 0
    owner_uid: int = -1


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=VALUE lines as Compose reads them: comments, blank lines, `export `, single/double quotes."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        out[key.strip()] = value
    return out


class SecretSourceUnavailable(RuntimeError):
    """The secrets source could not be read: it says where and why, never a value."""


def private_file_problem(path: str) -> str:
    """Why the file at `path` is not a private file of its owner ("" when it is): any permission bit for the group
    or others is refused, as ssh does with a private key."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror})"
    if mode & 0o077:
        return f"{path}: mode {mode:04o} lets others read it; chmod 600 it"
    return ""


def secret_source_config(sec: SecretsSettings) -> dict[str, str]:
    """SecretSource's config from prodg.yaml's `secrets:`: names and addresses, never a value. The one recipe for
    every resource that reads the source (`secrets`, and the backup store's keys)."""
    i = sec.infisical
    return {"source": sec.source, "env_file": sec.env_file, "infisical_url": i.api_base_url,
            "infisical_project_id": i.project_id, "infisical_environment": i.environment,
            "infisical_secret_path": i.secret_path, "infisical_client_id_env": i.client_id_env,
            "infisical_client_secret_env": i.client_secret_env, "infisical_credentials_file": i.credentials_file}


class SecretSource(dg.ConfigurableResource):
    """Where secret values come from. `source` is `env_file` (a KEY=VALUE file, mode 600, root-owned) or `infisical`:
    Infisical's API at `infisical_url`, read with Infisical's SDK as a machine identity (universal auth) whose client
    id and secret are in the environment variables named by `infisical_client_id_env`/`infisical_client_secret_env`,
    or in `infisical_credentials_file` (a root-only KEY=VALUE file). Every call reads the source again: no value is
    kept beyond the call. Values never reach logs, metadata or exceptions."""

    source: str = "env_file"
    env_file: str = "/opt/prodg/compose/.env"
    infisical_url: str = ""
    infisical_project_id: str = ""
    infisical_environment: str = "prod"
    infisical_secret_path: str = "/"
    infisical_client_id_env: str = "INFISICAL_CLIENT_ID"
    infisical_client_secret_env: str = "INFISICAL_CLIENT_SECRET"
    infisical_credentials_file: str = ""
    infisical_timeout_s: float = 10.0

    def values(self) -> dict[str, str]:
        if self.source == "infisical":
            return {s.secretKey: s.secretValue for s in self._infisical(lambda c: c.secrets.list_secrets(
                environment_slug=self.infisical_environment, secret_path=self.infisical_secret_path,
                project_id=self.infisical_project_id, expand_secret_references=True, include_imports=True)).secrets}
        try:
            with open(self.env_file, encoding="utf-8") as fh:
                return parse_env_file(fh.read())
        except FileNotFoundError:
            return {}

    def env_file_facts(self) -> EnvFileFacts:
        try:
            st = os.stat(self.env_file)
        except FileNotFoundError:
            return EnvFileFacts(self.env_file, False)
        return EnvFileFacts(self.env_file, True, stat.S_IMODE(st.st_mode), st.st_uid)

    @property
    def where(self) -> str:
        if self.source == "infisical":
            return (f"Infisical at {self.infisical_url} (project {self.infisical_project_id}, environment "
                    f"{self.infisical_environment}, path {self.infisical_secret_path})")
        return self.env_file

    def identity(self) -> tuple[str, str]:
        """The machine identity's (client id, client secret)."""
        names = (self.infisical_client_id_env, self.infisical_client_secret_env)
        if self.infisical_credentials_file:
            problem = private_file_problem(self.infisical_credentials_file)
            if problem:
                raise SecretSourceUnavailable(f"Infisical's machine identity: {problem}")
            with open(self.infisical_credentials_file, encoding="utf-8") as fh:
                held = parse_env_file(fh.read())
        else:
            held = dict(os.environ)
        if not all(held.get(n) for n in names):
            raise SecretSourceUnavailable(
                f"Infisical's machine identity is not set: {' and '.join(names)} (in prodg's environment, or in "
                f"secrets.infisical.credentials_file)")
        return held[names[0]], held[names[1]]

    def write_infisical(self, changes: Mapping[str, tuple[str, bool]]) -> None:
        """Writes each name → (value, already there) into Infisical's project/environment/path (a PATCH of an existing
        secret, else a POST), in one login."""

        def write(client) -> None:
            where = dict(environment_slug=self.infisical_environment, secret_path=self.infisical_secret_path,
                         project_id=self.infisical_project_id)
            for name, (value, exists) in sorted(changes.items()):
                if exists:
                    client.secrets.update_secret_by_name(current_secret_name=name, secret_value=value, **where)
                else:
                    client.secrets.create_secret_by_name(secret_name=name, secret_value=value, **where)

        self._infisical(write)

    def _infisical(self, call):
        """`call(client)` on a client logged in as the machine identity; any failure is a SecretSourceUnavailable
        naming where and why (an HTTP status, a connection error's kind), never a value."""
        from infisical_sdk import InfisicalSDKClient  # imported on first call: loading definitions does not pay
        from infisical_sdk.infisical_requests import APIError
        from requests.adapters import HTTPAdapter

        client_id, client_secret = self.identity()
        client = InfisicalSDKClient(host=self.infisical_url, cache_ttl=None)
        timeout = self.infisical_timeout_s

        class Bounded(HTTPAdapter):  # the SDK sets no timeout: an Infisical that accepts and never answers
            def send(self, request, **kwargs):
                kwargs["timeout"] = kwargs.get("timeout") or timeout
                return super().send(request, **kwargs)

        for scheme in ("http://", "https://"):
            client.api.session.mount(scheme, Bounded(max_retries=0))
        step = "log in"
        try:
            client.auth.universal_auth.login(client_id=client_id, client_secret=client_secret)
            step = "read the secrets"
            return call(client)
        except APIError as exc:
            raise SecretSourceUnavailable(f"{self.where}: could not {step} (HTTP {exc.status_code})") from None
        except Exception as exc:  # noqa: BLE001 — requests' and the SDK's errors alike: named by kind only
            raise SecretSourceUnavailable(f"{self.where}: could not {step} ({type(exc).__name__}: unreachable or "
                                          "not answering)") from None
        finally:
            client.close()


URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def redact(text: str, secrets: Mapping[str, str], mask: str | None = None) -> str:
    """`text` with every secret value (of 4+ characters) replaced by `<NAME>` (or by `mask`), and the credentials of
    every URL (`scheme://user:password@`) by `***` — git and boto echo URLs in their errors."""
    for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1] or "")):
        if value and len(value) >= 4:
            text = text.replace(value, mask if mask is not None else f"<{name}>")
    return URL_CREDENTIALS.sub(r"\1***@", text)


@dataclass(frozen=True)
class Move:
    name: str
    action: str  # create | update | unchanged | missing (not in the env file: nothing to move)
    verified: bool = False  # read back from Infisical with the env file's value (compared by hash)


def migrate(env_file: SecretSource, infisical: SecretSource, names: list[str], dry_run: bool) -> list[Move]:
    """Moves the env file's values of `names` into Infisical: what would change (dry run), or the writes and then a
    second read of every name compared by SHA-256 with the env file's value. Values never leave this function."""
    here, there = env_file.values(), infisical.values()
    moves = []
    for name in names:
        if not here.get(name):
            moves.append(Move(name, "missing"))
        elif name not in there:
            moves.append(Move(name, "create"))
        elif sha256_hex(there[name]) != sha256_hex(here[name]):
            moves.append(Move(name, "update"))
        else:
            moves.append(Move(name, "unchanged"))
    if dry_run:
        return moves
    infisical.write_infisical({m.name: (here[m.name], m.action == "update") for m in moves
                               if m.action in ("create", "update")})
    after = infisical.values()
    return [Move(m.name, m.action, m.action != "missing"
                 and sha256_hex(after.get(m.name, "")) == sha256_hex(here[m.name])) for m in moves]
