"""Host baseline: facts of the Docker host and their conformance, plus the exposure check (the real firewall)."""


import platform
import re
import shutil
import subprocess

import dagster as dg

from ..contract import EXPOSURE, HOST_ASSET, HOST_CONFORMS, HOST_SAFE_TO_DEPLOY, ROOT_BELOW_T1
from ..desired import DesiredState
from ..engine.client import DockerEngine
from ..engine.facts import exposed_ports, root_processes
from ..gitops.repo import ConfigRepo
from ..gitops.run import state_for_run


class HostShell(dg.ConfigurableResource):
    """Runs read-only fact commands on the Docker host (`ufw status`, `/etc/os-release`). `root` is where the host's
    filesystem is visible (`/` when prodg runs on the host; `/host` when it runs in a container with it mounted)."""

    root: str = "/"

    def run(self, *cmd: str) -> tuple[int, str]:
        if shutil.which(cmd[0]) is None:
            return 127, f"{cmd[0]}: not installed on this host"
        proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=30)
        return proc.returncode, (proc.stdout + proc.stderr).strip()

    def os_release(self) -> dict[str, str]:
        try:
            with open(f"{self.root.rstrip('/')}/etc/os-release", encoding="utf-8") as fh:
                return {k: v.strip('"') for k, _, v in (line.strip().partition("=") for line in fh) if k}
        except FileNotFoundError:
            return {}

    def free_disk_gb(self, path: str = "/") -> float:
        return shutil.disk_usage(f"{self.root.rstrip('/')}{path}" if self.root != "/" else path).free / 1e9


def parse_ufw(text: str) -> tuple[bool, list[str]]:
    """(active, ["22/tcp", ...]) from `ufw status`; IPv6 duplicates folded."""
    active = bool(re.search(r"^Status:\s*active", text, re.M))
    rules = []
    for line in text.splitlines():
        m = re.match(r"^(\d+(?::\d+)?(?:/(?:tcp|udp))?)\s+(?:\(v6\)\s+)?ALLOW", line.strip())
        if m and m.group(1) not in rules:
            rules.append(m.group(1))
    return active, rules


@dg.asset(name=HOST_ASSET, group_name="host_baseline", kinds={"linux"})
def host_baseline(context: dg.AssetExecutionContext, host: HostShell, docker: DockerEngine,
                  repo: ConfigRepo) -> dg.MaterializeResult:
    """Facts of the Docker host the mainframe runs on: OS, kernel, free disk, Docker version, UFW state. Nothing is
    changed here; the checks compare these facts with `host:` in prodg.yaml."""
    _, commit = state_for_run(context, repo)
    release = host.os_release()
    rc, ufw = host.run("ufw", "status")
    version = docker.client.version()
    return dg.MaterializeResult(metadata={
        "commit": commit,
        "os": release.get("PRETTY_NAME", "unknown"),
        "kernel": platform.release(),
        "free_disk_gb": round(host.free_disk_gb(), 1),
        "docker_version": version.get("Version", "unknown"),
        "ufw": ufw if rc == 0 else f"unavailable: {ufw}",
    })


@dg.asset_check(asset=HOST_ASSET, name=HOST_CONFORMS, blocking=False)
def host_conforms(context: dg.AssetCheckExecutionContext, host: HostShell, repo: ConfigRepo) -> dg.AssetCheckResult:
    """OS, kernel and UFW match prodg.yaml `host:`. Reported red, never blocking: a host that drifted from its
    description must still take deploys and the break-glass rollback (only `host_safe_to_deploy` blocks). When
    `host.ufw` is declared and the host has no ufw, the check says so and fails, instead of passing."""
    state, _ = state_for_run(context, repo)
    want = state.settings.host
    problems = []
    pretty = host.os_release().get("PRETTY_NAME", "")
    if want.os and want.os not in pretty:
        problems.append(f"OS is {pretty!r}, expected {want.os!r} (prodg.yaml host.os)")
    kernel = platform.release()
    if want.kernel and not kernel.startswith(want.kernel):
        problems.append(f"kernel is {kernel}, expected {want.kernel}* (prodg.yaml host.kernel)")
    ufw_want = want.ufw
    rc, out = host.run("ufw", "status") if ufw_want else (0, "")
    if not ufw_want:
        pass  # prodg.yaml declares no firewall for this host
    elif rc != 0:
        problems.append(f"UFW cannot be read ({out}); the allow-list is unverified")
    else:
        active, rules = parse_ufw(out)
        if ufw_want.active and not active:
            problems.append("UFW is not active")
        expected = list(ufw_want.allow)
        if sorted(rules) != sorted(expected):
            problems.append(f"UFW allows {', '.join(rules) or 'nothing'}; expected exactly {', '.join(expected)}")
    return dg.AssetCheckResult(passed=not problems, metadata={
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        "os": pretty, "kernel": kernel, "blocks_deploys": False})


@dg.asset_check(asset=HOST_ASSET, name=HOST_SAFE_TO_DEPLOY, blocking=True)
def host_safe_to_deploy(context: dg.AssetCheckExecutionContext, host: HostShell,
                        repo: ConfigRepo) -> dg.AssetCheckResult:
    """Blocks the deploy while the host's free disk is below prodg.yaml `host.min_free_disk_gb`: images, data and
    logs written onto a full disk corrupt services mid-deploy. The only host condition that stops deploys."""
    state, _ = state_for_run(context, repo)
    want = state.settings.host.min_free_disk_gb
    free = host.free_disk_gb()
    minimum = f"{want:,.1f}".removesuffix(".0")
    problems = [f"free disk {free:.1f} GB is below {minimum} GB (prodg.yaml host.min_free_disk_gb)"] \
        if free < want else []
    return dg.AssetCheckResult(passed=not problems, metadata={
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
        "free_disk_gb": round(free, 1), "min_free_disk_gb": float(want)})


def exposure_result(docker: DockerEngine, state: DesiredState) -> dg.AssetCheckResult:
    """Every port the project's containers publish on 0.0.0.0 or :: is public on purpose (`host.public_ports`, or a
    service's `x-prodg.public_ports`) — those made by hand included. Docker-published ports bypass UFW, so this, not
    UFW, is the mainframe's real firewall check; it runs with the host baseline and after every service deploy."""
    allowed = set(state.settings.public_ports) | {p for s in state.services.values() for p in s.public_ports}
    exposed = exposed_ports(docker.client, state.project)
    bad = [f"{name}: {port} on {ip}" for name, port, ip in exposed if port not in allowed]
    return dg.AssetCheckResult(passed=not bad, metadata={
        "outside_allow_list": dg.MetadataValue.md("\n".join(f"- {b}" for b in bad) or "none"),
        "public_allow_list": ", ".join(sorted(allowed)),
        "published_on_wildcard": len(exposed),
    })


@dg.asset_check(asset=HOST_ASSET, name=EXPOSURE, blocking=False)
def exposure(context: dg.AssetCheckExecutionContext, docker: DockerEngine, repo: ConfigRepo) -> dg.AssetCheckResult:
    """Every port published on 0.0.0.0 or :: is public on purpose (see `exposure_result`)."""
    state, _ = state_for_run(context, repo)
    return exposure_result(docker, state)


@dg.asset_check(asset=HOST_ASSET, name=ROOT_BELOW_T1, blocking=False)
def no_root_below_t1(context: dg.AssetCheckExecutionContext, docker: DockerEngine,
                     repo: ConfigRepo) -> dg.AssetCheckResult:
    """No service of trust tier T2 or T3 runs a process as root (read with the Engine's `top`: what the container
    runs as, after any drop of privileges), unless its Compose block says why it must
    (`x-prodg.runs_as_root`). Reported, never blocking: the fix is a `user:` where the image allows it."""
    state, _ = state_for_run(context, repo)
    specs = {s.name: s for s in state.services.values()}
    below = {name: count for name, count in root_processes(docker.client, state.project).items()
             if name in specs and specs[name].trust_tier != "T1"}
    root = [f"{name} ({specs[name].trust_tier}): {count} process(es) as root" for name, count in sorted(below.items())
            if count and not specs[name].runs_as_root]
    known = [f"{name}: {specs[name].runs_as_root}" for name, count in sorted(below.items())
             if count and specs[name].runs_as_root]
    return dg.AssetCheckResult(passed=not root, metadata={
        "as_root": dg.MetadataValue.md("\n".join(f"- {r}" for r in root) or "none"),
        "as_root_with_a_reason": dg.MetadataValue.md("\n".join(f"- {k}" for k in known) or "none"),
        "below_t1_running": len(below)})
