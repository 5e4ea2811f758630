"""Secrets: the source (the env file on the host today, Infisical's API once prodg.yaml says so — one resource),
the env-file parser, and the one redactor every log line, exception and metadata value passes through."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Mapping

import dagster as dg


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


class SecretSource(dg.ConfigurableResource):
    """Where secret values come from. `source` is `env_file` (a KEY=VALUE file, mode 600, root-owned) or `infisical`
    (Infisical's REST API at `infisical_url`, token read from the environment variable named by
    `infisical_token_env` when needed). Values never reach logs or metadata."""

    source: str = "env_file"
    env_file: str = "/opt/prodg/compose/.env"
    infisical_url: str = ""
    infisical_project_id: str = ""
    infisical_environment: str = "prod"
    infisical_token_env: str = "INFISICAL_TOKEN"  # the name of the environment variable holding the token

    def values(self) -> dict[str, str]:
        if self.source == "infisical":
            return self._infisical()
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

    def _infisical(self) -> dict[str, str]:
        import requests  # imported on first call: loading the code location does not pay for it

        resp = requests.get(
            f"{self.infisical_url.rstrip('/')}/api/v3/secrets/raw",
            params={"workspaceId": self.infisical_project_id, "environment": self.infisical_environment},
            headers={"Authorization": f"Bearer {os.environ.get(self.infisical_token_env, '')}"},
            timeout=10,
        )
        if resp.status_code != 200:
            raise RuntimeError(f"Infisical answered HTTP {resp.status_code} for the secrets of project "
                               f"{self.infisical_project_id!r}")
        return {s["secretKey"]: s["secretValue"] for s in resp.json().get("secrets", [])}


URL_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def redact(text: str, secrets: Mapping[str, str], mask: str | None = None) -> str:
    """`text` with every secret value (of 4+ characters) replaced by `<NAME>` (or by `mask`), and the credentials of
    every URL (`scheme://user:password@`) by `***` — git and boto echo URLs in their errors."""
    for name, value in sorted(secrets.items(), key=lambda kv: -len(kv[1] or "")):
        if value and len(value) >= 4:
            text = text.replace(value, mask if mask is not None else f"<{name}>")
    return URL_CREDENTIALS.sub(r"\1***@", text)
