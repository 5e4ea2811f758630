"""Every setting prodg reads, typed once, with its default in one place.

`EnvSettings` is the environment (read when the definitions are built, never at import). `Settings` is
`config/prodg.yaml`: one frozen view per section, built from the validated YAML by `settings_from_yaml`. Consumers
read fields; nothing else in the package defaults a setting. docs/SETTINGS.md lists the same names.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .contract import ASSET_OF_METHOD, CHECK_FAMILIES

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- the environment --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvSettings:
    """The environment variables that shape the code location (see docs/SETTINGS.md)."""

    repo: str = REPO_ROOT  # PRODG_REPO
    repo_url: str = ""  # PRODG_REPO_URL
    config_subdir: str = "config"  # PRODG_CONFIG_SUBDIR
    branch: str = "main"  # PRODG_BRANCH
    deploy_root: str = ""  # PRODG_DEPLOY_ROOT ("" = $PRODG_REPO/.prodg/deployed)
    host_root: str = "/"  # PRODG_HOST_ROOT
    tls_ca_file: str = ""  # PRODG_TLS_CA_FILE
    tls_connect: str = ""  # PRODG_TLS_CONNECT (host:port)
    sensor_interval_s: int = 30  # PRODG_SENSOR_INTERVAL_S
    probe_network: str = ""  # PRODG_PROBE_NETWORK
    dagster_url: str = ""  # PRODG_DAGSTER_URL: the webserver asked to reload the code location ("" = never asked)
    registry_mirror: str = ""  # PRODG_REGISTRY_MIRROR: pull NAME as MIRROR/NAME ("" = from each image's registry)
    # PRODG_BACKUP_IDENTITY: the host's age identity file (restores, drills, and the key the backups' manifests are
    # signed with; never in git)
    backup_identity: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "EnvSettings":
        raw_interval = (env.get("PRODG_SENSOR_INTERVAL_S") or "").strip()
        try:
            interval = int(raw_interval) if raw_interval else cls.sensor_interval_s
        except ValueError:
            raise ValueError(f"PRODG_SENSOR_INTERVAL_S must be a whole number of seconds, got {raw_interval!r}") \
                from None
        return cls(
            repo=env.get("PRODG_REPO") or REPO_ROOT,
            repo_url=env.get("PRODG_REPO_URL", ""),
            config_subdir=env.get("PRODG_CONFIG_SUBDIR") or "config",
            branch=env.get("PRODG_BRANCH") or "main",
            deploy_root=env.get("PRODG_DEPLOY_ROOT", ""),
            host_root=env.get("PRODG_HOST_ROOT") or "/",
            tls_ca_file=env.get("PRODG_TLS_CA_FILE", ""),
            tls_connect=env.get("PRODG_TLS_CONNECT", ""),
            sensor_interval_s=max(1, interval),
            probe_network=env.get("PRODG_PROBE_NETWORK", ""),
            dagster_url=env.get("PRODG_DAGSTER_URL", ""),
            registry_mirror=env.get("PRODG_REGISTRY_MIRROR", "").strip().rstrip("/"),
            backup_identity=env.get("PRODG_BACKUP_IDENTITY", "").strip(),
        )

    @property
    def tls_connect_host_port(self) -> tuple[str, int]:
        host, _, port = self.tls_connect.rpartition(":")
        return host, int(port) if port.isdigit() else 0


# The backup store's client, tunable from the environment: variable → (field, type, default, lowest allowed). A
# stalled store fails a call after about max_attempts × read timeout, never hangs.
STORE_SETTINGS = {
    "PRODG_BACKUP_CONNECT_TIMEOUT_S": ("connect_timeout_s", float, 10.0, 0.1),
    "PRODG_BACKUP_READ_TIMEOUT_S": ("read_timeout_s", float, 120.0, 0.1),
    "PRODG_BACKUP_MAX_ATTEMPTS": ("max_attempts", int, 5, 1),
    "PRODG_BACKUP_PART_SIZE_MB": ("part_size_mb", int, 16, 5),
}


# Every HTTP listener prodg serves (`listener.Listener`: the webhook, and what else listens): variable → (field,
# type, default, lowest allowed). A client gets `timeout_s` for its whole request, at most `per_client` connections
# at once out of `workers`, and `rate_per_minute` requests (a burst of a quarter of that) before 429.
LISTENER_SETTINGS = {
    "PRODG_LISTEN_TIMEOUT_S": ("timeout_s", float, 10.0, 0.1),
    "PRODG_LISTEN_WORKERS": ("workers", int, 16, 2),
    "PRODG_LISTEN_PER_CLIENT": ("per_client", int, 4, 1),
    "PRODG_LISTEN_RATE_PER_MINUTE": ("rate_per_minute", int, 120, 1),
}


def store_settings(environ: Mapping[str, str] | None = None) -> dict:
    """The BackupStore fields set by STORE_SETTINGS' environment variables (their defaults when unset)."""
    return numeric_settings(STORE_SETTINGS, environ)


def listener_settings(environ: Mapping[str, str] | None = None) -> dict:
    """The listener limits set by LISTENER_SETTINGS' environment variables (their defaults when unset)."""
    return numeric_settings(LISTENER_SETTINGS, environ)


def numeric_settings(table: Mapping[str, tuple], environ: Mapping[str, str] | None = None) -> dict:
    """{field: value} of a table of numeric environment settings (variable → field, type, default, lowest)."""
    environ = os.environ if environ is None else environ
    out = {}
    for name, (fld, kind, default, lowest) in table.items():
        raw = (environ.get(name) or "").strip()
        try:
            value = kind(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None
        if value < lowest:
            raise ValueError(f"{name} must be at least {lowest}, got {raw!r}")
        out[fld] = value
    return out


# -- prodg.yaml --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class UfwSettings:
    active: bool = True
    allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostSettings:
    hostname: str = ""
    public_ip: str = ""
    tailscale_ip: str = ""
    os: str = ""
    kernel: str = ""
    min_free_disk_gb: float = 0.0
    public_ports: tuple[str, ...] = ()  # "80/tcp" style: what may be published on 0.0.0.0 / ::
    bind_roots: tuple[str, ...] = ()
    data_root: str = ""  # services' data folders: an existing one under it is handed to the service's `user:`
    ufw: Optional[UfwSettings] = None  # None: no firewall declared for this host (not checked)
    ssh_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class DnsRecord:
    name: str
    type: str
    content: str
    proxied: bool = False


@dataclass(frozen=True)
class DnsSettings:
    provider: str = "cloudflare"
    zone: str = ""
    api_base_url: str = "https://api.cloudflare.com/client/v4"
    api_token_secret: str = "CLOUDFLARE_API_TOKEN"
    require_dns_only: bool = False
    records: tuple[DnsRecord, ...] = ()


@dataclass(frozen=True)
class TlsSettings:
    acme_ca_url: str = ""
    email: str = ""
    expiry_warning_days: int = 14
    storage: str = ""


@dataclass(frozen=True)
class InfisicalSettings:
    """prodg.yaml secrets.infisical: where the secrets are (project, environment, folder) and how prodg logs in — a
    machine identity's universal auth, its client id and secret from the environment variables named here, or from
    a root-only `credentials_file` holding those names as KEY=VALUE lines; never from prodg.yaml itself."""

    api_base_url: str = ""
    project_id: str = ""
    environment: str = "prod"
    secret_path: str = "/"
    client_id_env: str = "INFISICAL_CLIENT_ID"
    client_secret_env: str = "INFISICAL_CLIENT_SECRET"
    credentials_file: str = ""


@dataclass(frozen=True)
class RequiredSecret:
    used_by: tuple[str, ...] = ()
    purpose: str = ""
    format: str = ""  # "bcrypt": the value must be a bcrypt hash (`caddy hash-password`), never a placeholder


BCRYPT = re.compile(r"^\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}$")


def secret_format_problem(name: str, value: str, fmt: str) -> str:
    """Why `value` of secret `name` is not of its declared format ("" when it is, or when none is declared); never
    shows the value."""
    if fmt == "bcrypt" and not BCRYPT.match(value or ""):
        return (f"{name} is not a bcrypt hash ($2a$/$2b$/$2y$, cost, 53 characters): make one with "
                f"`caddy hash-password` and put it in the secrets source")
    return ""


@dataclass(frozen=True)
class SecretsSettings:
    source: str = "env_file"
    env_file: str = ""
    infisical: InfisicalSettings = field(default_factory=InfisicalSettings)
    required: Mapping[str, RequiredSecret] = field(default_factory=dict)

    @property
    def required_names(self) -> tuple[str, ...]:
        return tuple(sorted(self.required))


STALL_SETTING = "backups.stall_timeout_s"  # named by a capture that fails for writing nothing (BackupSettings)

# How a `volume` target's data is read consistently (prodg.yaml backups.targets.*.capture)
VOLUME_CAPTURES = ("redis_bgsave", "sqlite", "files")


@dataclass(frozen=True)
class BackupTarget:
    name: str  # postgres | minio | configs | a service's data (redis, vaultwarden, …) | secrets
    method: str  # pg_dumpall | s3_mirror | config_archive | volume | secrets_file | dagster_storage
    prefix: str
    retention_days: int
    service: Optional[str] = None
    capture: str = ""  # volume: redis_bgsave | sqlite | files
    path: str = ""  # volume: the folder in the service's container that holds its data (one of its mounts)
    helper_image: str = ""  # volume with capture sqlite: an image with python3 for the helper ("" = the service's)

    @property
    def asset(self) -> str:
        return ASSET_OF_METHOD.get(self.method) or f"{self.name}_backup"


@dataclass(frozen=True)
class BackupSettings:
    bucket: str = ""
    endpoint_url: str = ""
    region: str = "us-east-1"
    access_key_id_env: str = "B2_KEY_ID"
    secret_access_key_env: str = "B2_KEY_SECRET"
    schedule: str = "0 3 * * *"  # daily, UTC
    timezone: str = "UTC"
    start_date: str = ""  # "" = the day the definitions are built
    compression: str = "zstd"
    freshness_hours: float = 26.0
    targets: tuple[BackupTarget, ...] = ()
    # encryption.recipients: (name, age1…) pairs every object is encrypted to; () only with `encryption: none`
    recipients: tuple[tuple[str, str], ...] = ()
    # signers: (name, Ed25519 key) pairs whose signed manifests are trusted besides the host's own (none by default)
    signers: tuple[tuple[str, str], ...] = ()
    object_lock_mode: str = "GOVERNANCE"  # object_lock.mode, used when the bucket has Object Lock
    # a capture (pg_dumpall, a data folder's tar, an SQLite copy) that writes nothing for this long is stopped (its
    # helper container or process killed) and fails the day's backup, which keeps nothing
    stall_timeout_s: float = 600.0

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)

    @property
    def first_day(self) -> datetime.date:
        return datetime.date.fromisoformat(self.start_date) if self.start_date else \
            datetime.datetime.now(datetime.timezone.utc).date()


@dataclass(frozen=True)
class TelegramSettings:
    api_base_url: str = "https://api.telegram.org"
    bot_token_secret: str = "TELEGRAM_BOT_TOKEN"
    chat_id: str = ""
    on: tuple[str, ...] = ("deploy_failure", "backup_success", "backup_failure", "backup_missed", "check")
    ui_base_url: str = "http://127.0.0.1:3000"


@dataclass(frozen=True)
class NotificationSettings:
    telegram: TelegramSettings = field(default_factory=TelegramSettings)


DURATION = re.compile(r"^([1-9][0-9]{0,4})(m|h|d)$")
DAILY_CHECKS_AT = (6, 0)  # a family checked every 1d runs at 06:00 UTC (after the 03:00 backups and 05:00 drill)


def duration_minutes(text: Any) -> Optional[int]:
    """Minutes of a duration such as 5m, 6h or 1d; None when `text` is not one."""
    match = DURATION.fullmatch(str(text).strip()) if isinstance(text, str) else None
    return int(match.group(1)) * {"m": 1, "h": 60, "d": 1440}[match.group(2)] if match else None


def every_cron(text: Any) -> tuple[str, str]:
    """(cron, problem) of a check interval: minutes that divide an hour, hours that divide a day, or 1d (at 06:00
    UTC); `problem` says why not ("" when it is one)."""
    minutes = duration_minutes(text)
    if minutes is not None:
        if minutes < 60 and 60 % minutes == 0:
            return f"*/{minutes} * * * *", ""
        if minutes % 60 == 0 and minutes < 1440 and 24 % (minutes // 60) == 0:
            return ("0 * * * *" if minutes == 60 else f"0 */{minutes // 60} * * *"), ""
        if minutes == 1440:
            return f"{DAILY_CHECKS_AT[1]} {DAILY_CHECKS_AT[0]} * * *", ""
    return "", (f"must be minutes that divide an hour (1m … 30m), hours that divide a day (1h … 12h) or 1d, "
                f"got {text!r}")


@dataclass(frozen=True)
class WatchSettings:
    """How prodg watches between events: each check family's interval, the reminder while a check stays red, when
    a check counts as flapping, and the hour (UTC) by which yesterday's backups must be complete."""

    every: tuple[tuple[str, str], ...] = (("health", "5m"), ("exposure", "15m"), ("host", "1h"),
                                          ("secrets", "1d"), ("tls", "1d"), ("dns", "1d"))
    remind_every: str = "6h"
    flapping_changes: int = 4
    flapping_within: str = "1h"
    backups_due_by: str = "04:00"

    def interval(self, family: str) -> str:
        return dict(self.every)[family]

    @property
    def remind_minutes(self) -> int:
        return duration_minutes(self.remind_every) or 360

    @property
    def flapping_minutes(self) -> int:
        return duration_minutes(self.flapping_within) or 60

    @property
    def due_hour_minute(self) -> tuple[int, int]:
        hour, _, minute = self.backups_due_by.partition(":")
        return int(hour), int(minute)


assert {f for f, _ in WatchSettings.every} == set(CHECK_FAMILIES)


@dataclass(frozen=True)
class DeploySettings:
    """prodg.yaml `deploy:`. Every piece of a deploy's work that could go on for ever is bounded here: the health
    wait, an image build, an image pull, and a build context's size (refused when the config is loaded, before a
    byte of it is read)."""

    branch: str = ""
    prune: bool = False
    self_heal: bool = False
    health_timeout_s: float = 120.0
    drift_schedule: str = "*/15 * * * *"
    stop_timeout_s: int = 20
    build_timeout_s: float = 1800.0  # an image build still running after this is stopped (its containers removed)
    pull_timeout_s: float = 600.0  # an image pull still running after this is abandoned (the Engine cancels it)
    build_context_max_mb: float = 100.0  # a larger build context is a validation error

    @property
    def build_context_max_bytes(self) -> int:
        return int(self.build_context_max_mb * 1_000_000)


# deploy: fields that are seconds or sizes (a number, int or float, in the YAML)
DEPLOY_BOUNDS = ("health_timeout_s", "build_timeout_s", "pull_timeout_s", "build_context_max_mb")


@dataclass(frozen=True)
class HeadscaleSettings:
    api_base_url: str = "http://127.0.0.1:8080"
    api_key_secret: str = "HEADSCALE_API_KEY"


@dataclass(frozen=True)
class TailnetGrant:
    tier: str  # T2 or T3
    service: str  # what nodes of that tier may reach on the host: the ports this service publishes there


@dataclass(frozen=True)
class TailnetSettings:
    """prodg.yaml `tailnet:`: who is T1 (the Headscale users who run the box) and what the other tiers' nodes may
    reach; from it prodg writes Headscale's policy (desired/tailnet.py)."""

    operators: tuple[str, ...] = ()
    grants: tuple[TailnetGrant, ...] = ()


@dataclass(frozen=True)
class IntegrationSettings:
    headscale: Optional[HeadscaleSettings] = None  # None: no tailnet asset


@dataclass(frozen=True)
class Settings:
    """What Compose cannot say: config/prodg.yaml, one typed view per section."""

    host: HostSettings = field(default_factory=HostSettings)
    dns: DnsSettings = field(default_factory=DnsSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    backups: BackupSettings = field(default_factory=BackupSettings)
    notifications: NotificationSettings = field(default_factory=NotificationSettings)
    deploy: DeploySettings = field(default_factory=DeploySettings)
    watch: WatchSettings = field(default_factory=WatchSettings)
    integrations: IntegrationSettings = field(default_factory=IntegrationSettings)
    tailnet: Optional[TailnetSettings] = None  # None: Headscale's policy is not prodg's

    # the names several consumers use
    @property
    def dns_records(self) -> tuple[DnsRecord, ...]:
        return self.dns.records

    @property
    def backup_targets(self) -> tuple[BackupTarget, ...]:
        return self.backups.targets

    @property
    def required_secrets(self) -> tuple[str, ...]:
        return self.secrets.required_names

    @property
    def public_ports(self) -> tuple[str, ...]:
        return self.host.public_ports


def _m(value: Any) -> dict:
    """`value` when it is a mapping, else {} (its type error is reported by the schema check)."""
    return value if isinstance(value, dict) else {}


def _strs(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value) if isinstance(value, list) else ()


def _num(value: Any, default: float) -> float:
    """A number from the YAML, or `default` (a wrong type is reported by the schema check, never raised here)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _pick(cls, raw: Mapping, **converted):
    """`cls` from the keys of `raw` it declares (defaults for the rest); `converted` overrides."""
    names = cls.__dataclass_fields__
    kwargs = {k: v for k, v in raw.items() if k in names and v is not None}
    kwargs.update(converted)
    return cls(**kwargs)


def settings_from_yaml(data: Mapping, records: tuple[DnsRecord, ...] = (),
                       targets: tuple[BackupTarget, ...] = ()) -> Settings:
    """The typed view of prodg.yaml's (interpolated, schema-checked) data. `records` and `targets` are built by the
    loader, which validates them against the Compose file."""
    host, dns, tls = _m(data.get("host")), _m(data.get("dns")), _m(data.get("tls"))
    sec, backups, deploy = _m(data.get("secrets")), _m(data.get("backups")), _m(data.get("deploy"))
    telegram = _m(_m(data.get("notifications")).get("telegram"))
    integrations, watch = _m(data.get("integrations")), _m(data.get("watch"))
    every, flapping = {**dict(WatchSettings.every), **_m(watch.get("every"))}, _m(watch.get("flapping"))
    ufw = host.get("ufw")
    headscale, tailnet = integrations.get("headscale"), data.get("tailnet")
    return Settings(
        host=_pick(HostSettings, host, public_ports=_strs(host.get("public_ports")),
                   bind_roots=_strs(host.get("bind_roots")), ssh_keys=_strs(host.get("ssh_keys")),
                   min_free_disk_gb=_num(host.get("min_free_disk_gb"), 0.0),
                   ufw=UfwSettings(bool(ufw.get("active", True)), _strs(ufw.get("allow")))
                   if isinstance(ufw, dict) else None),
        dns=_pick(DnsSettings, dns, require_dns_only=dns.get("require_dns_only") is True, records=records),
        tls=_pick(TlsSettings, tls),
        secrets=_pick(SecretsSettings, sec, infisical=_pick(InfisicalSettings, _m(sec.get("infisical"))),
                      required={str(k): RequiredSecret(_strs(_m(v).get("used_by")), str(_m(v).get("purpose", "")),
                                                       str(_m(v).get("format", "")))
                                for k, v in _m(sec.get("required")).items()}),
        backups=_pick(BackupSettings, backups, targets=targets,
                      start_date=str(backups.get("start_date") or "")[:10],
                      schedule=str(backups.get("schedule") or BackupSettings.schedule),
                      region=str(backups.get("region") or BackupSettings.region),
                      freshness_hours=_num(backups.get("freshness_hours"), BackupSettings.freshness_hours),
                      recipients=tuple((str(k), str(v)) for k, v in
                                       _m(_m(backups.get("encryption")).get("recipients")).items()),
                      signers=tuple((str(k), str(v)) for k, v in _m(backups.get("signers")).items()),
                      object_lock_mode=str(_m(backups.get("object_lock")).get("mode")
                                           or BackupSettings.object_lock_mode).upper(),
                      stall_timeout_s=_num(backups.get("stall_timeout_s"), BackupSettings.stall_timeout_s)),
        # no notifications.telegram section: Telegram is off (with one, it is on unless `on: []`)
        notifications=NotificationSettings(_pick(TelegramSettings, telegram, chat_id=str(telegram.get("chat_id", "")),
                                                 on=_strs(telegram["on"]) if "on" in telegram
                                                 else TelegramSettings.on if telegram else ())),
        deploy=_pick(DeploySettings, deploy, **{name: _num(deploy.get(name), getattr(DeploySettings, name))
                                                for name in DEPLOY_BOUNDS}),
        watch=_pick(WatchSettings, watch, every=tuple((f, str(every[f])) for f in CHECK_FAMILIES),
                    flapping_changes=int(_num(flapping.get("changes"), WatchSettings.flapping_changes)),
                    flapping_within=str(flapping.get("within") or WatchSettings.flapping_within)),
        integrations=IntegrationSettings(_pick(HeadscaleSettings, headscale) if isinstance(headscale, dict)
                                         else None),
        tailnet=TailnetSettings(_strs(tailnet.get("operators")),
                                tuple(TailnetGrant(str(g.get("tier", "")), str(g.get("service", "")))
                                      for g in tailnet.get("grants") or [] if isinstance(g, dict)))
        if isinstance(tailnet, dict) else None,
    )
