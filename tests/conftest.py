"""Shared fixtures: the test bed — a real git repo holding tests/stack/config, deployed to the real Docker Engine."""

from __future__ import annotations

import calendar
import contextlib
import ipaddress
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field

import bcrypt
import dagster as dg
import pytest

import docker
import prodg_assets
from prodg_assets.agekeys import Identity
from prodg_assets.engine.facts import network_subnets
from tests.registry import REGISTRY_SCRIPT, local_registry

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# the `prodg` command line, run by the interpreter running the tests (no path into a particular virtualenv)
PRODG_CLI = [sys.executable, "-m", "prodg_assets.cli"]
STACK_CONFIG = os.path.join(HERE, "stack", "config")

# A run started without job control (`cmd &` in a script, CI's background job) and pytest-xdist's workers inherit
# SIGINT ignored, and an ignored signal stays ignored in every process started from here. Dagster maps SIGTERM to
# SIGINT's handler after each in-process run (dagster._utils.interrupts), so from then on the listener, `dagster dev`
# and docker/dev/up that a test starts — and stops with SIGTERM or Ctrl-C — would ignore both and outlive the test.
# Python's own defaults, once, in the process that starts them.
if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
CONSOLE_PASSWORD = "console-Test-Password-4d5e6f"
TEST_SECRETS = {
    "POSTGRES_PASSWORD": "pg-Test-Secret-7f3a9c",
    "REDIS_PASSWORD": "redis-Test-Secret-2b8e1d",
    "HERMES_API_TOKEN": "hermes-Test-Token-91c4e0",
    "TELEGRAM_BOT_TOKEN": "123456:tg-Test-Token-AbCdEf",
    "CLOUDFLARE_API_TOKEN": "cf-Test-Token-5e6f7a8b",
    "HEADSCALE_API_KEY": "hs-Test-Key-0a1b2c3d",
    # the console's basic auth: the bcrypt hash of CONSOLE_PASSWORD (a fixed salt, so every process has the same)
    "DAGSTER_UI_BASICAUTH_HASH": bcrypt.hashpw(CONSOLE_PASSWORD.encode(), b"$2b$04$prodgTestSaltConsole..").decode(),
}


def git(repo: str, *args: str) -> str:
    return subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, text=True).stdout.strip()


def age_keygen(path: str) -> str:
    """A new age identity written to `path` by the real `age-keygen` (mode 600); returns its recipient (age1…)."""
    subprocess.run(["age-keygen", "-o", path], check=True, capture_output=True)
    with open(path, encoding="utf-8") as fh:
        return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("# public key:"))


def init_repo(repo: str, message: str) -> str:
    """`repo` (already holding its files) made a git repo on branch main with one commit of everything; its SHA."""
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
    git(repo, "config", "user.email", "ops@prodg.test")
    git(repo, "config", "user.name", "prodg tests")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


@dataclass
class Testbed:
    """A config repo (real git) for the test stack, the environment that points prodg at it, and helpers."""

    __test__ = False  # not a test class

    repo: str
    env: dict[str, str]
    project: str
    client: docker.DockerClient
    commits: list[str] = field(default_factory=list)

    @property
    def compose(self) -> str:
        return os.path.join(self.repo, "config", "compose", "docker-compose.yml")

    def commit(self, message: str) -> str:
        git(self.repo, "add", "-A")
        git(self.repo, "commit", "-q", "-m", message)
        sha = git(self.repo, "rev-parse", "HEAD")
        self.commits.append(sha)
        return sha

    def reset_to(self, sha: str) -> bool:
        """The repo's files put back as they were at `sha`, as a new commit (history only grows, as on a shared
        branch); False when HEAD already held them."""
        if not git(self.repo, "diff", "--name-only", sha, "HEAD"):
            return False
        git(self.repo, "read-tree", "-u", "--reset", sha)
        self.commit(f"back to {sha[:12]}")
        return True

    def edit(self, rel: str, old: str, new: str) -> None:
        path = os.path.join(self.repo, "config", rel)
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        assert old in text, f"{old!r} not in {rel}"
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text.replace(old, new, 1))

    def add_postgres_backups(self, bucket: str, endpoint_url: str, start_date: str, identity_text: str = "") -> str:
        """Appends a `backups:` section (the test stack's Postgres to `bucket` at `endpoint_url`, keys from
        PRODG_TEST_STORE_KEY_ID / PRODG_TEST_STORE_SECRET) to prodg.yaml and commits it. The backups are
        encrypted to the bed's host identity (PRODG_BACKUP_IDENTITY in the bed's env): `identity_text`, or one made
        by age-keygen."""
        identity = os.path.join(os.path.dirname(self.repo), "backup-host.agekey")
        if identity_text:
            with open(os.open(identity, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
                fh.write(identity_text + "\n")
            recipient = Identity.parse(identity_text).recipient.text
        else:
            recipient = age_keygen(identity)
        self.env["PRODG_BACKUP_IDENTITY"] = identity
        with open(os.path.join(self.repo, "config", "prodg.yaml"), "a") as fh:
            fh.write(f"""
backups:
  bucket: {bucket}
  endpoint_url: {endpoint_url}
  region: us-east-1
  access_key_id_env: PRODG_TEST_STORE_KEY_ID
  secret_access_key_env: PRODG_TEST_STORE_SECRET
  start_date: "{start_date}"
  encryption:
    recipients: {{host: {recipient}}}
  targets:
    postgres: {{method: pg_dumpall, service: postgres, prefix: postgres/, retention_days: 30}}
""")
        return self.commit("backups of the test stack's Postgres")

    def defs(self) -> dg.Definitions:
        return prodg_assets.build_defs(self.env)

    def materialize(self, selection: str | None = None, commit: str | None = None, instance=None,
                    run_config: dict | None = None, raise_on_error: bool = False) -> dg.ExecuteInProcessResult:
        defs = self.defs()
        job = defs.resolve_implicit_global_asset_job_def()
        sel = None if selection is None else [s.strip() for s in selection.split(",")]
        tags = {"prodg/commit": commit or self.commits[-1]}
        if sel:
            job = job.get_subset(asset_selection={dg.AssetKey(s) for s in sel})
        return job.execute_in_process(instance=instance, tags=tags, run_config=run_config or {},
                                      raise_on_error=raise_on_error)

    def published_port(self, service: str, container_port: int, protocol: str = "tcp") -> int:
        """The host port `container_port` of the service's running container is published on — the one the Engine
        picked for a `127.0.0.1::PORT` publication (read back as prodg reads it)."""
        from prodg_assets.engine.facts import published_port

        attrs = self.client.api.inspect_container(f"{self.project}-{service}")
        port = published_port(attrs, container_port, protocol)
        assert port, f"{service}: {container_port}/{protocol} is not published ({attrs['NetworkSettings']['Ports']})"
        return port

    def containers(self) -> dict[str, docker.models.containers.Container]:
        return {c.labels["prodg.service"]: c for c in
                self.client.containers.list(all=True, filters={"label": f"prodg.project={self.project}"})}

    def cleanup(self) -> None:
        for c in self.client.containers.list(all=True, filters={"label": f"prodg.project={self.project}"}):
            c.remove(force=True)
        for n in self.client.networks.list(filters={"label": f"prodg.project={self.project}"}):
            n.remove()
        # this bed's commit tags only: a source-digest tag is shared by every bed built from the same hermes-api,
        # and another run's bed may be between building it and starting its container (one image per content of
        # config/hermes-api stays on the Engine)
        for image in self.client.images.list(name="prodg/hermes-api"):
            for tag in image.tags:
                if tag.split(":")[1][:12] in {c[:12] for c in self.commits}:
                    try:
                        self.client.images.remove(tag, force=True)
                    except docker.errors.ImageNotFound:
                        pass


@pytest.fixture(scope="session")
def registry_mirror(tmp_path_factory) -> str:
    """The registry the seed's images are pulled from (PRODG_REGISTRY_MIRROR): the one .ci/run started for the whole
    run when it is set, else one of this session's own (Debian's docker-registry on loopback) with the stand-ins
    pushed under the seed's names (docker/images/seed-names)."""
    if os.environ.get("PRODG_REGISTRY_MIRROR"):
        yield os.environ["PRODG_REGISTRY_MIRROR"]
        return
    with local_registry(str(tmp_path_factory.mktemp("registry"))) as address:
        pushed = subprocess.run([REGISTRY_SCRIPT, "push", address], capture_output=True, text=True)
        assert pushed.returncode == 0, pushed.stderr
        os.environ["PRODG_REGISTRY_MIRROR"] = address
        try:
            yield address
        finally:
            os.environ.pop("PRODG_REGISTRY_MIRROR", None)


@pytest.fixture(scope="session")
def docker_client(registry_mirror) -> docker.DockerClient:
    client = docker.from_env()
    client.ping()  # no Engine is a failure of the test environment, never a skip
    missing = [i for i in ("prodg/postgres:bookworm", "prodg/redis:bookworm", "prodg/caddy:bookworm",
                           "prodg/prometheus:bookworm", "prodg/node-exporter:bookworm", "prodg/base:bookworm")
               if not client.images.list(name=i)]
    assert not missing, f"images missing (run docker/images/build.sh): {missing}"
    return client


def make_caddy_root(data: str) -> str:
    """Caddy's internal CA, made before Caddy starts (Caddy uses a root it finds in its storage), so TLS checks can
    verify the chain for real. Returns the root certificate's path."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "prodg test bed root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    folder = os.path.join(data, "caddy", "caddy", "pki", "authorities", "local")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "root.crt"), "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(os.path.join(folder, "root.key"), "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return os.path.join(folder, "root.crt")


_SUBNETS_GIVEN: set[ipaddress.IPv4Network] = set()  # handed out by this process, networks maybe not created yet


def engine_subnets(client: docker.DockerClient) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """Every subnet the Engine's networks hold (their IPAM config)."""
    return [subnet for _, subnet in network_subnets(client)]


SUBNET_CLAIMS = "/tmp/prodg-test-subnets"  # one file per subnet handed out, naming the process that holds it


def _claim(subnet: ipaddress.IPv4Network) -> bool:
    """Reserve `subnet` across every test process on this machine (xdist workers, another run): a file created
    exclusively, naming this pid; a claim whose process is gone is taken over."""
    os.makedirs(SUBNET_CLAIMS, exist_ok=True)
    path = os.path.join(SUBNET_CLAIMS, str(subnet).replace("/", "_"))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(open(path).read().strip() or 0)
                if holder == os.getpid():
                    return False
                os.kill(holder, 0)
                return False  # held by a live process
            except (ProcessLookupError, ValueError):
                try:
                    os.unlink(path)  # its process is gone: take it over
                except FileNotFoundError:
                    pass
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        return True
    return False


@contextlib.contextmanager
def engine_lock(client: docker.DockerClient, name: str, stale_after_s: float = 3600, poll_s: float = 2.0):
    """A lock every run on this Engine sees, whichever machine or container it runs in: a created, never started
    container named `name` (a second create is refused with 409, so that run waits). A holder that died leaves it
    behind; older than `stale_after_s`, it is taken over. Released only by its holder."""
    holder = uuid.uuid4().hex
    while True:
        try:
            client.api.create_container("prodg/base:bookworm", command=["true"], name=name,
                                        labels={"prodg.lock": name, "prodg.lock-holder": holder})
            break
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
        try:
            created = client.api.inspect_container(name)["Created"][:19]
            age = time.time() - calendar.timegm(time.strptime(created, "%Y-%m-%dT%H:%M:%S"))
            if age > stale_after_s:
                client.api.remove_container(name, force=True)
                continue
        except docker.errors.NotFound:
            continue
        time.sleep(poll_s)
    try:
        yield
    finally:
        try:
            if client.api.inspect_container(name)["Config"]["Labels"].get("prodg.lock-holder") == holder:
                client.api.remove_container(name, force=True)
        except docker.errors.NotFound:
            pass


def free_subnet(client: docker.DockerClient, pool: str = "10.231.0.0/16", prefix: int = 24) -> str:
    """A /24 of `pool` that overlaps no network on the Engine and that no other test process on this machine holds
    (a claim file each, SUBNET_CLAIMS), tried from a random offset, so two runs start apart."""
    taken = [*engine_subnets(client), *_SUBNETS_GIVEN]
    candidates = list(ipaddress.ip_network(pool).subnets(new_prefix=prefix))
    start = random.randrange(len(candidates))  # two runs (or two containers sharing the Engine) start apart
    for candidate in candidates[start:] + candidates[:start]:
        if not any(candidate.overlaps(t) for t in taken if t.version == candidate.version) and _claim(candidate):
            _SUBNETS_GIVEN.add(candidate)
            return str(candidate)
    raise RuntimeError(f"no free /{prefix} left in {pool} on this Engine")


def make_testbed(tmp: str, client: docker.DockerClient, name: str) -> Testbed:
    repo = os.path.join(tmp, "repo")
    shutil.copytree(STACK_CONFIG, os.path.join(repo, "config"))
    shutil.copytree(os.path.join(ROOT, "config", "hermes-api"), os.path.join(repo, "config", "hermes-api"))
    # the bed's name and folder in the message: two beds made in the same second from the same files would
    # otherwise get the same first commit SHA, and share (and remove) each other's commit-tagged images
    first = init_repo(repo, f"test stack {name} ({os.path.basename(tmp)})")
    secrets_file = os.path.join(tmp, "secrets.env")
    with open(secrets_file, "w") as fh:
        fh.write("".join(f"{k}={v}\n" for k, v in TEST_SECRETS.items()))
    os.chmod(secrets_file, 0o600)
    subnet = free_subnet(client)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "PRODG_REPO": repo,
        "PRODG_DEPLOY_ROOT": os.path.join(tmp, "deployed"),
        "PRODG_DATA": os.path.join(tmp, "data"),
        "PRODG_SECRETS_FILE": secrets_file,
        "PRODG_TEST_NAME": name,
        # each test bed its own subnet, free on this Engine, so beds of concurrent runs never overlap
        "PRODG_TEST_SUBNET": subnet,
        # the console's allowed clients: the bed network's gateway, which requests from this host arrive from
        "PRODG_CONSOLE_CLIENTS": f"{ipaddress.ip_network(subnet)[1]}/32",
        "PRODG_TLS_CA_FILE": make_caddy_root(os.path.join(tmp, "data")),
        # the seed's images come from the test registry (the registry_mirror fixture)
        "PRODG_REGISTRY_MIRROR": os.environ.get("PRODG_REGISTRY_MIRROR", ""),
    }
    return Testbed(repo, env, name, client, commits=[first])


@pytest.fixture
def own_bed(tmp_path, docker_client) -> Testbed:
    """A test bed of this test alone (a name no other run on the Engine has), its containers removed and the process
    environment put back afterwards."""
    bed = make_testbed(str(tmp_path), docker_client, f"prodgb{uuid.uuid4().hex[:8]}")
    old_env = dict(os.environ)
    try:
        yield bed
    finally:
        bed.cleanup()
        os.environ.clear()
        os.environ.update(old_env)


@pytest.fixture(scope="module")
def testbed(tmp_path_factory, docker_client) -> Testbed:
    """The test stack deployed once per module from an empty Engine (containers removed afterwards)."""
    tmp = str(tmp_path_factory.mktemp("testbed"))
    name = f"prodgt{uuid.uuid4().hex[:8]}"
    bed = make_testbed(tmp, docker_client, name)
    old_env = dict(os.environ)
    os.environ.update(bed.env)  # the asset code reads prodg.yaml variables from the process environment
    try:
        bed.cleanup()
        yield bed
    finally:
        bed.cleanup()
        os.environ.clear()
        os.environ.update(old_env)


# docs/RELIABILITY.md is made from what the tests measured: the `measured` fixture and the session hooks that record
# outcomes and render (or check) the doc at the end of the session (tests/reliability/recorder.py).
from tests.reliability.recorder import *  # noqa: E402,F401,F403
