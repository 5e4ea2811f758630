"""Load and validate a config tree (`prodg.yaml` + the Compose file it names) into a DesiredState: the one entry
point, orchestrating the schema check (schema), interpolation (interpolate), the Compose reader (compose) and the
cross-checks between prodg.yaml and the services.

Pure: reads only through the ConfigTree it is given and the environment mapping it is passed. Every problem is
collected as a located SpecError; `load_desired_state` raises ConfigInvalid with all of them, never a traceback.
Whatever building the definitions would reject is rejected here, so a config that validates always loads.
"""

from __future__ import annotations

import datetime
import posixpath
import re
from typing import Any, Mapping

from ..agekeys import AgeError, Recipient
from ..contract import ASSET_OF_METHOD, CHECK_FAMILIES
from ..settings import (
    DEPLOY_BOUNDS,
    BackupTarget,
    DeploySettings,
    DnsRecord,
    Settings,
    duration_minutes,
    every_cron,
    settings_from_yaml,
)
from ..signkeys import SigningError, parse_signer
from .compose import read_compose
from .errors import ConfigInvalid, SpecError
from .grafana import MOUNT as GRAFANA_PROVISIONING
from .grafana import check_provisioning
from .interpolate import LoadContext
from .model import DesiredState, ServiceSpec
from .schema import PRODG_SCHEMA, check_schema, kind_of
from .tailnet import check_tailnet
from .tree import ConfigTree
from .yamldoc import Doc, load_yaml

_ASSET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

PRODG_FILE = "prodg.yaml"
DEFAULT_COMPOSE = "compose/docker-compose.yml"
DAILY_CRON = re.compile(r"\s*(\d{1,2})\s+(\d{1,2})\s+\*\s+\*\s+\*\s*")
CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
CRON_RANGES = ((0, 59), (0, 23), (1, 31), (1, 12), (0, 7))


def daily_at(cron: str) -> tuple[int, int] | None:
    """(hour, minute) of a daily cron expression `M H * * *`, or None when it is not one."""
    match = DAILY_CRON.fullmatch(cron)
    if not match or int(match.group(1)) > 59 or int(match.group(2)) > 23:
        return None
    return int(match.group(2)), int(match.group(1))


def cron_problem(cron: str) -> str:
    """Why `cron` is not a five-field cron expression Dagster's scheduler accepts ("" when it is one)."""
    fields = cron.split()
    if len(fields) != 5:
        return f"must be a cron expression of five fields (minute hour day month weekday), got {cron!r}"
    for text, (low, high), name in zip(fields, CRON_RANGES, ("minute", "hour", "day", "month", "weekday")):
        if not CRON_FIELD.match(text):
            return f"{name} field {text!r} is not a number, range, list, step or *"
        for number in re.findall(r"\d+", re.sub(r"/\d+", "", text)):
            if not low <= int(number) <= high:
                return f"{name} field {text!r} is outside {low}-{high}"
        for step in re.findall(r"/(\d+)", text):
            if int(step) == 0:
                return f"{name} field {text!r} steps by 0"
    return ""


def _load_doc(ctx: LoadContext, rel: str) -> Doc | None:
    raw = ctx.tree.read(rel)
    if raw is None:
        ctx.errors.append(SpecError(ctx.file(rel), 1, "(document)", "file not found"))
        return None
    doc, errors = load_yaml(ctx.file(rel), raw)
    ctx.errors.extend(errors)
    if doc is not None and not isinstance(doc.data, dict):
        ctx.errors.append(doc.error((), f"must be a mapping, got {kind_of(doc.data)}"))
        return None
    return doc


def _map(value: Any) -> dict:
    """`value` when it is a mapping, else {} (its type error is already reported by the schema check)."""
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _dns_records(ctx: LoadContext, doc: Doc, dns: dict) -> tuple[DnsRecord, ...]:
    records = tuple(DnsRecord(str(r.get("name")), str(r.get("type")), str(r.get("content")), r.get("proxied") is True)
                    for r in _list(dns.get("records")) if isinstance(r, dict))
    if dns.get("require_dns_only") is True:
        for i, rec in enumerate(records):
            if rec.proxied:
                ctx.errors.append(doc.error(("dns", "records", i, "proxied"),
                                            "must be false: Caddy needs direct reachability for ACME HTTP-01"))
    return records


def _backup_targets(ctx: LoadContext, doc: Doc, backups: dict,
                    services: Mapping[str, ServiceSpec]) -> tuple[BackupTarget, ...]:
    targets = []
    for name, t in sorted(_map(backups.get("targets")).items()):
        if not isinstance(t, dict):
            continue
        service = t.get("service")
        if not isinstance(service, (str, type(None))):
            continue  # reported by the schema check
        method = t.get("method")
        if method in ("pg_dumpall", "s3_mirror", "volume") and not service:
            ctx.errors.append(doc.error(("backups", "targets", name), f"method {method} needs `service`"))
        elif service and service not in services:
            ctx.errors.append(doc.error(("backups", "targets", name, "service"),
                                        f"names service {service!r}, which the Compose file does not declare"))
        capture, path = str(t.get("capture") or ""), str(t.get("path") or "")
        if capture == "redis_bgsave" and not path:
            path = "/data"  # the redis image's working folder, where BGSAVE writes dump.rdb
        if method in ("volume", "secrets_file") and not _ASSET_NAME.match(str(name)):
            ctx.errors.append(doc.error(("backups", "targets", name),
                                        f"a {method} target's name becomes its asset `<name>_backup`: use lower-case "
                                        f"letters, digits and _ (got {name!r})"))
        if method == "volume":
            spec = services.get(service) if isinstance(service, str) else None
            if not capture:
                ctx.errors.append(doc.error(("backups", "targets", name),
                                            "method volume needs `capture` (redis_bgsave, sqlite or files)"))
            elif not path:
                ctx.errors.append(doc.error(("backups", "targets", name),
                                            f"capture {capture} needs `path`: the folder of the service's data"))
            if spec is not None and path and path.rstrip("/") not in {m.target.rstrip("/") for m in spec.volumes}:
                mounts = ", ".join(sorted(m.target for m in spec.volumes)) or "none"
                ctx.errors.append(doc.error(("backups", "targets", name, "path"),
                                            f"{path!r} is not one of service {service}'s mounts ({mounts}); its data "
                                            f"would not survive the container"))
        elif capture or path:
            ctx.errors.append(doc.error(("backups", "targets", name, "capture" if capture else "path"),
                                        f"only a volume target takes `capture` and `path` (method is {method})"))
        if method == "secrets_file" and backups.get("encryption") == "none":
            ctx.errors.append(doc.error(("backups", "targets", name),
                                        "the secrets file is never uploaded unencrypted: give backups.encryption "
                                        "recipients, or remove this target"))
        helper_image = str(t.get("helper_image") or "")
        if helper_image and capture != "sqlite":
            ctx.errors.append(doc.error(("backups", "targets", name, "helper_image"),
                                        "only a target with `capture: sqlite` runs a helper image"))
        prefix = str(t.get("prefix", ""))
        if not prefix.endswith("/") or prefix.startswith("/"):
            ctx.errors.append(doc.error(("backups", "targets", name, "prefix"),
                                        f"must be a relative prefix ending in '/', got {prefix!r}"))
        days = t.get("retention_days", 0)
        days = days if isinstance(days, int) and not isinstance(days, bool) else 0
        if days < 1 and "retention_days" in t:
            ctx.errors.append(doc.error(("backups", "targets", name, "retention_days"), "must be at least 1"))
        targets.append(BackupTarget(str(name), str(method), prefix, days, service, capture, path.rstrip("/"),
                                    helper_image))
    for t in targets:
        if any(o.prefix != t.prefix and o.prefix.startswith(t.prefix) for o in targets):
            ctx.errors.append(doc.error(("backups", "targets", t.name, "prefix"),
                                        "overlaps another target's prefix; retention works per prefix"))
    methods = [t.method for t in targets]
    assets = [t.asset for t in targets]
    for t in targets:
        if t.method in ASSET_OF_METHOD and methods.count(t.method) > 1:
            ctx.errors.append(doc.error(("backups", "targets", t.name, "method"),
                                        f"only one target may use {t.method} (its asset is named after the method)"))
        elif t.method == "secrets_file" and methods.count(t.method) > 1:
            ctx.errors.append(doc.error(("backups", "targets", t.name, "method"),
                                        "only one target may back up the secrets file"))
        elif assets.count(t.asset) > 1:
            ctx.errors.append(doc.error(("backups", "targets", t.name),
                                        f"its asset {t.asset} is another target's too; rename the target"))
    return tuple(targets)


def _encryption(ctx: LoadContext, doc: Doc, data: dict) -> None:
    """Backups leave the host encrypted to age recipients, unless `encryption: none` says otherwise in so many
    words; each recipient must parse (what the first backup would otherwise fail on)."""
    if not isinstance(data.get("backups"), dict):
        return
    backups = data["backups"]
    if "encryption" not in backups:
        ctx.errors.append(doc.error(("backups",), "no `encryption`: every backup would leave this host in plaintext; "
                                                  "list age recipients under encryption.recipients (age-keygen "
                                                  "prints one) or write `encryption: none`"))
        return
    recipients = _map(backups["encryption"]).get("recipients")
    if not isinstance(recipients, dict):
        return  # `none`, or a type error the schema check reports
    if not recipients:
        ctx.errors.append(doc.error(("backups", "encryption", "recipients"),
                                    "lists no recipient; write `encryption: none` to store backups unencrypted"))
    for name, text in recipients.items():
        if not isinstance(text, str):
            continue  # reported by the schema check
        try:
            Recipient.parse(text)
        except AgeError as exc:
            ctx.errors.append(doc.error(("backups", "encryption", "recipients", name),
                                        f"not an age X25519 recipient (age1…): {exc}"))


def _signers(ctx: LoadContext, doc: Doc, data: dict) -> None:
    """Each key of `backups.signers` (whose signed manifests restores, drills and audits trust) must parse: a key
    that does not would leave every day it signed refused."""
    for name, text in _map(_map(data.get("backups")).get("signers")).items():
        if not isinstance(text, str):
            continue  # reported by the schema check
        try:
            parse_signer(text)
        except SigningError as exc:
            ctx.errors.append(doc.error(("backups", "signers", name), str(exc)))


def _schedules(ctx: LoadContext, doc: Doc, data: dict) -> None:
    """What the scheduler would refuse when the definitions are built: reported here, located."""
    backups, deploy = _map(data.get("backups")), _map(data.get("deploy"))
    if "timezone" in backups and backups["timezone"] != "UTC":
        ctx.errors.append(doc.error(("backups", "timezone"),
                                    f"the backup partitions are UTC days; must be UTC, got {backups['timezone']!r}"))
    if isinstance(backups.get("schedule"), str) and daily_at(backups["schedule"]) is None:
        ctx.errors.append(doc.error(("backups", "schedule"),
                                    f"must be a daily cron 'M H * * *' (UTC), got {backups['schedule']!r}"))
    start = backups.get("start_date")
    if start is not None and not isinstance(start, datetime.date):
        try:
            datetime.date.fromisoformat(str(start)[:10])
        except ValueError:
            ctx.errors.append(doc.error(("backups", "start_date"), f"must be a date YYYY-MM-DD, got {start!r}"))
    drift = deploy.get("drift_schedule")
    if isinstance(drift, str) and cron_problem(drift):
        ctx.errors.append(doc.error(("deploy", "drift_schedule"), cron_problem(drift)))


def _bounds(ctx: LoadContext, doc: Doc, data: dict) -> None:
    """The bounds on work that could go on for ever (deploy's timeouts and build context size, a backup's stall):
    0 or less would fail every deploy or backup at once."""
    deploy = _map(data.get("deploy"))
    bounds = [("deploy", name, deploy.get(name)) for name in DEPLOY_BOUNDS]
    bounds.append(("backups", "stall_timeout_s", _map(data.get("backups")).get("stall_timeout_s")))
    for section, name, value in bounds:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            ctx.errors.append(doc.error((section, name), f"must be more than 0, got {value}"))


def _watch(ctx: LoadContext, doc: Doc, data: dict) -> None:
    """Intervals the scheduler can run, a reminder and flapping window that are durations, and a due hour after the
    backups' own."""
    watch = _map(data.get("watch"))
    for family, text in _map(watch.get("every")).items():
        if family in CHECK_FAMILIES and isinstance(text, str) and every_cron(text)[1]:
            ctx.errors.append(doc.error(("watch", "every", family), every_cron(text)[1]))
    for path, text in ((("watch", "remind_every"), watch.get("remind_every")),
                       (("watch", "flapping", "within"), _map(watch.get("flapping")).get("within"))):
        if isinstance(text, str) and duration_minutes(text) is None:
            ctx.errors.append(doc.error(path, f"must be a duration such as 30m, 6h or 1d, got {text!r}"))
    changes = _map(watch.get("flapping")).get("changes")
    if isinstance(changes, int) and not isinstance(changes, bool) and changes < 2:
        ctx.errors.append(doc.error(("watch", "flapping", "changes"), f"must be 2 or more, got {changes}"))
    due = watch.get("backups_due_by")
    if due is None:
        return
    match = re.fullmatch(r"([01][0-9]|2[0-3]):([0-5][0-9])", due) if isinstance(due, str) else None
    if not match:
        ctx.errors.append(doc.error(("watch", "backups_due_by"), f"must be an hour of the day 'HH:MM' (UTC), "
                                                                 f"got {due!r}"))
        return
    backup_at = daily_at(str(_map(data.get("backups")).get("schedule") or "0 3 * * *"))
    if backup_at and (int(match.group(1)), int(match.group(2))) <= backup_at:
        ctx.errors.append(doc.error(("watch", "backups_due_by"),
                                    f"must be after the backups' own hour ({backup_at[0]:02d}:{backup_at[1]:02d} "
                                    f"UTC, backups.schedule), got {due!r}"))


def _telegram(ctx: LoadContext, doc: Doc, data: dict) -> None:
    """Telegram on (a `notifications.telegram` section whose `on` is not empty) needs a chat id and a declared bot
    token secret: a notifier that could only ever fail would be silence."""
    telegram = _map(_map(data.get("notifications")).get("telegram"))
    events = telegram.get("on", ["(the default events)"]) if "telegram" in _map(data.get("notifications")) else []
    if not events or not isinstance(events, list):
        return
    chat = telegram.get("chat_id")
    if chat is None or str(chat).strip() in ("", "0"):
        where = ("notifications", "telegram", "chat_id") if "chat_id" in telegram else ("notifications", "telegram")
        ctx.errors.append(doc.error(where, f"Telegram is on (on: {', '.join(map(str, events))}) but its chat id is "
                                          f"{'missing' if chat is None else repr(str(chat))}: set it (the ops "
                                          f"group's chat id, e.g. TELEGRAM_CHAT_ID in the environment), or turn "
                                          f"Telegram off with `on: []`"))
    token = telegram.get("bot_token_secret", "TELEGRAM_BOT_TOKEN")
    required = _map(_map(data.get("secrets")).get("required"))
    if isinstance(token, str) and token not in required:
        where = ("notifications", "telegram", "bot_token_secret") if "bot_token_secret" in telegram \
            else ("notifications", "telegram")
        ctx.errors.append(doc.error(where, f"Telegram is on but its bot token secret {token!r} is not declared in "
                                          f"secrets.required: declare it, or turn Telegram off with `on: []`"))


def _settings(ctx: LoadContext, doc: Doc, data: dict, services: Mapping[str, ServiceSpec]) -> Settings:
    host, sec = _map(data.get("host")), _map(data.get("secrets"))
    records = _dns_records(ctx, doc, _map(data.get("dns")))
    targets = _backup_targets(ctx, doc, _map(data.get("backups")), services)
    _encryption(ctx, doc, data)
    _signers(ctx, doc, data)
    _schedules(ctx, doc, data)
    _bounds(ctx, doc, data)
    _watch(ctx, doc, data)
    _telegram(ctx, doc, data)
    for i, port in enumerate(_list(host.get("public_ports"))):
        if not re.match(r"^\d{1,5}/(tcp|udp)$", str(port)):
            ctx.errors.append(doc.error(("host", "public_ports", i), f"must look like 443/tcp, got {str(port)!r}"))
    data_root = host.get("data_root")
    if isinstance(data_root, str):
        roots = [str(r).rstrip("/") for r in _list(host.get("bind_roots"))]
        if not data_root.startswith("/") or ".." in data_root.split("/"):
            ctx.errors.append(doc.error(("host", "data_root"), f"must be an absolute path, got {data_root!r}"))
        elif not any(data_root.rstrip("/") == r or data_root.startswith(r + "/") for r in roots if r):
            ctx.errors.append(doc.error(("host", "data_root"), f"{data_root!r} is outside host.bind_roots: no "
                                                               f"service could mount a folder under it"))
    for key, decl in _map(sec.get("required")).items():
        for i, svc_name in enumerate(_list(_map(decl).get("used_by"))):
            if isinstance(svc_name, str) and svc_name not in services:
                ctx.errors.append(doc.error(("secrets", "required", key, "used_by", i),
                                            f"names service {svc_name!r}, which the Compose file does not declare"))
    settings = settings_from_yaml(data, records, targets)
    ctx.errors.extend(check_tailnet(doc, settings, services))
    return settings


def _load(tree: ConfigTree, env: Mapping[str, str], host_root: str | None, trees_root: str = "") \
        -> tuple[DesiredState | None, LoadContext]:
    ctx = LoadContext(tree, env)
    pdoc = _load_doc(ctx, PRODG_FILE)
    if pdoc is None:
        return None, ctx
    check_schema(ctx.errors, pdoc, (), pdoc.data, PRODG_SCHEMA)
    raw_vars = pdoc.data.get("variables") if isinstance(pdoc.data.get("variables"), dict) else {}
    secrets_decl = (pdoc.data.get("secrets") or {}).get("required") if isinstance(pdoc.data.get("secrets"), dict) \
        else None
    ctx.secrets = set(secrets_decl) if isinstance(secrets_decl, dict) else set()
    for name, default in raw_vars.items():
        if name in ctx.secrets:
            ctx.errors.append(pdoc.error(("variables", name), "is also declared as a secret"))
        ctx.variables[name] = str(env.get(name, default))
    pdata = ctx.interpolate_all(pdoc, (), {k: v for k, v in pdoc.data.items() if k != "variables"}, lambda p: False)
    compose_rel = pdata.get("compose_file", DEFAULT_COMPOSE)
    if (not isinstance(compose_rel, str) or compose_rel.startswith("/")
            or any(p == ".." for p in compose_rel.split("/"))):
        ctx.errors.append(pdoc.error(("compose_file",), "must be a path inside the config tree"))
        return None, ctx
    cdoc = _load_doc(ctx, compose_rel)
    if cdoc is None:
        return None, ctx
    host = _map(pdata.get("host"))
    roots = _list(host.get("bind_roots"))
    tree_root = host_root or getattr(tree, "root", None) or "/opt/prodg/config"
    limit = _map(pdata.get("deploy")).get("build_context_max_mb", DeploySettings.build_context_max_mb)
    limit_bytes = int(limit * 1_000_000) if isinstance(limit, (int, float)) and not isinstance(limit, bool) else 0
    compose = read_compose(ctx, cdoc, compose_rel, (tree_root.rstrip("/") or "/"),
                           [posixpath.normpath(str(r)) for r in roots if str(r).startswith("/")], trees_root,
                           frozenset(str(p) for p in _list(host.get("public_ports"))), max(0, limit_bytes))
    if compose is None:
        return None, ctx
    project, specs, networks, volumes = compose
    settings = _settings(ctx, pdoc, pdata, specs)
    for folder in sorted({m.config_path.split("#")[0] for spec in specs.values() for m in spec.volumes
                          if m.config_path and m.target.rstrip("/") == GRAFANA_PROVISIONING}):
        ctx.errors.extend(check_provisioning(tree, tree.label, folder))
    state = DesiredState(project, specs, networks, tuple(sorted(volumes.values())), settings, compose_rel,
                         dict(ctx.variables))
    return state, ctx


def validate(tree: ConfigTree, env: Mapping[str, str] | None = None) -> list[SpecError]:
    """Every problem in the config tree, located; an empty list means it is valid."""
    _, ctx = _load(tree, env or {}, None)
    return sorted(set(ctx.errors))


def load_desired_state(tree: ConfigTree, env: Mapping[str, str] | None = None,
                       host_root: str | None = None, trees_root: str = "") -> DesiredState:
    """The desired state of `tree`; raises ConfigInvalid listing every error. `host_root` is where the tree's
    files are on the Docker host (for bind mounts), by default the tree's own folder; with `trees_root` (a commit's
    state), a config bind's source is its content tree there instead (desired.model.content_tree)."""
    state, ctx = _load(tree, env or {}, host_root, trees_root)
    if ctx.errors or state is None:
        raise ConfigInvalid(ctx.errors or [SpecError(tree.label, 1, "(document)", "could not be loaded")])
    return state
