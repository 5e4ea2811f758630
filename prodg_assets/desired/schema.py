"""The schema of `prodg.yaml`: every field it may carry, and the structural check that reports each violation as a
located error. Unknown keys are errors, never silently ignored. Pure."""

from __future__ import annotations

from typing import Any

from ..contract import CHECK_FAMILIES
from .errors import SpecError
from .yamldoc import Doc, Path


class Req:
    def __init__(self, schema: Any):
        self.schema = schema


class MapOf:
    """A mapping with free-form keys whose values follow `schema`."""

    def __init__(self, schema: Any):
        self.schema = schema


class Either:
    """A value that is a mapping following `mapping`, or else follows `scalar` (e.g. `none` or {recipients: …})."""

    def __init__(self, scalar: Any, mapping: dict):
        self.scalar, self.mapping = scalar, mapping


class OneOf:
    def __init__(self, *choices: str):
        self.choices = choices


TYPE_WORDS = {str: "a string", int: "an integer", bool: "true or false", float: "a number", dict: "a mapping",
               list: "a list"}


# config/prodg.yaml: every field it may carry. Unknown keys are errors, never silently ignored.
PRODG_SCHEMA = {
    "compose_file": str,
    "variables": MapOf((str, int, float, bool)),
    "host": Req({
        "hostname": Req(str), "public_ip": str, "tailscale_ip": str, "os": Req(str), "kernel": str,
        "min_free_disk_gb": Req((int, float)), "public_ports": Req([str]), "bind_roots": [str],
        "data_root": str, "ufw": {"active": bool, "allow": [str]}, "ssh_keys": [str],
    }),
    "dns": {
        "provider": OneOf("cloudflare"), "zone": str, "api_base_url": str, "api_token_secret": str,
        "require_dns_only": bool,
        "records": [{"name": Req(str), "type": Req(OneOf("A", "AAAA", "CNAME")), "content": Req(str),
                     "proxied": bool}],
    },
    "tls": {"acme_ca_url": str, "email": str, "expiry_warning_days": int, "storage": str},
    "secrets": Req({
        "source": Req(OneOf("env_file", "infisical")), "env_file": str,
        "infisical": {"api_base_url": str, "project_id": str, "environment": str, "secret_path": str,
                      "client_id_env": str, "client_secret_env": str, "credentials_file": str},
        "required": Req(MapOf({"used_by": [str], "purpose": str, "format": OneOf("bcrypt")})),
    }),
    "backups": {
        "bucket": Req(str), "endpoint_url": str, "region": str, "access_key_id_env": str,
        "secret_access_key_env": str, "schedule": str, "timezone": str, "start_date": (str, object),
        "compression": OneOf("zstd", "gzip"), "freshness_hours": (int, float),
        "encryption": Either(OneOf("none"), {"recipients": Req(MapOf(str))}),
        "signers": MapOf(str),
        "object_lock": {"mode": OneOf("governance", "compliance")},
        "stall_timeout_s": (int, float),
        "targets": Req(MapOf({"method": Req(OneOf("pg_dumpall", "s3_mirror", "config_archive", "volume",
                                                    "secrets_file", "dagster_storage")),
                              "service": str, "prefix": Req(str), "retention_days": Req(int),
                              "capture": OneOf("redis_bgsave", "sqlite", "files"), "path": str,
                              "helper_image": str})),
    },
    "notifications": {
        "telegram": {"api_base_url": str, "bot_token_secret": str, "chat_id": (str, int),
                     "on": [OneOf("deploy_failure", "backup_success", "backup_failure", "backup_missed",
                                  "check")],
                     "ui_base_url": str},
    },
    "deploy": {
        "branch": str, "prune": bool, "self_heal": bool, "health_timeout_s": (int, float),
        "drift_schedule": str, "stop_timeout_s": int, "build_timeout_s": (int, float),
        "pull_timeout_s": (int, float), "build_context_max_mb": (int, float),
    },
    "watch": {
        "every": {family: str for family in CHECK_FAMILIES}, "remind_every": str,
        "flapping": {"changes": int, "within": str}, "backups_due_by": str,
    },
    "integrations": {"headscale": {"api_base_url": str, "api_key_secret": str}},
    "tailnet": {"operators": Req([str]), "grants": [{"tier": Req(OneOf("T2", "T3")), "service": Req(str)}]},
}


def kind_of(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "nothing"}.get(type(value), type(value).__name__)


# Sections an older prodg.yaml may still hold, and what replaced them.
REMOVED = {
    ("secrets", "infisical", "token_env"): "removed: prodg logs in to Infisical as a machine identity (universal "
                                           "auth); name its variables in client_id_env and client_secret_env, or "
                                           "set credentials_file, and delete this key",
    ("images",): "removed: images are pulled from their registry, or from PRODG_REGISTRY_MIRROR (an air-gapped "
                 "host's or this machine's local registry: docker/images/registry); delete this section",
}


def check_schema(errors: list[SpecError], doc: Doc, path: Path, value: Any, schema: Any) -> None:
    """Structural check of `value` against PRODG_SCHEMA-style `schema`."""
    if isinstance(schema, Req):
        schema = schema.schema
    if isinstance(schema, Either):
        schema = schema.mapping if isinstance(value, dict) else schema.scalar
    if isinstance(schema, OneOf):
        if value not in schema.choices:
            errors.append(doc.error(path, f"must be one of {', '.join(schema.choices)}, got {value!r}"))
        return
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            errors.append(doc.error(path, f"must be a mapping, got {kind_of(value)}"))
            return
        for key in value:
            if path + (key,) in REMOVED:
                errors.append(doc.error(path + (key,), REMOVED[path + (key,)]))
            elif key not in schema:
                errors.append(doc.error(path + (key,), f"unknown key (allowed: {', '.join(sorted(schema))})"))
        for key, sub in schema.items():
            if key in value:
                check_schema(errors, doc, path + (key,), value[key], sub)
            elif isinstance(sub, Req):
                errors.append(doc.error(path, f"missing required key '{key}'"))
        return
    if isinstance(schema, MapOf):
        if not isinstance(value, dict):
            errors.append(doc.error(path, f"must be a mapping, got {kind_of(value)}"))
            return
        for key, sub in value.items():
            check_schema(errors, doc, path + (key,), sub, schema.schema)
        return
    if isinstance(schema, list):
        if not isinstance(value, list):
            errors.append(doc.error(path, f"must be a list, got {kind_of(value)}"))
            return
        for i, item in enumerate(value):
            check_schema(errors, doc, path + (i,), item, schema[0])
        return
    types = schema if isinstance(schema, tuple) else (schema,)
    if object in types:
        return
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        words = " or ".join(TYPE_WORDS.get(t, t.__name__) for t in types)
        errors.append(doc.error(path, f"must be {words}, got {kind_of(value)}"))
