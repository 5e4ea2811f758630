"""The tailnet's trust tiers as Headscale's policy: written from prodg.yaml's `tailnet:` section and the Compose file,
validated at load, and proven by its own `tests` block before it is ever applied. Pure.

The tiers are the seed's (MAINFRAME.md, "Hermes agent trust tiers"):
- T1: the Headscale users in `tailnet.operators` (group:operators) and nodes tagged tag:t1 reach every port of every
  node, the console included;
- T2 (tag:t2) and T3 (tag:t3: remote workers, Modal, untrusted code) reach only the host ports of the services
  `tailnet.grants` names for their tier — never a T1 service, never a port that also serves a T1 service's domain
  (Caddy's 80/443 while the console is public there), never each other;
- any other node reaches nothing (a Headscale policy denies what it does not accept).

The policy names the host `mainframe` (host.tailscale_ip). Its `tests` block carries, for each tier, the pairs it
must accept and deny; `failing_tests` evaluates them here, as Tailscale's control plane does when a policy is saved,
and a policy whose tests fail is a validation error.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping, Optional

from ..settings import Settings
from .errors import SpecError
from .model import ServiceSpec
from .yamldoc import Doc

HOST_ALIAS = "mainframe"
OPERATORS = "group:operators"
TIER_TAGS = {"T1": "tag:t1", "T2": "tag:t2", "T3": "tag:t3"}
LOOPBACK = re.compile(r"^(127\.|::1$|localhost$)")
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")
HEADER = ("// Headscale's policy, written by prodg from prodg.yaml (tailnet:) and the Compose file. Change it there:\n"
          "// prodg's check reports any other edit, and the next materialisation of `tailnet` replaces it.\n")


def reachable_ports(settings: Settings, services: Mapping[str, ServiceSpec]) -> list[int]:
    """Every port the host answers on beyond loopback: the services' publications and the firewall's own openings
    (sshd)."""
    ports = {port for spec in services.values() for port in _granted_ports(spec)}
    ports |= {int(rule.split("/")[0]) for rule in (settings.host.ufw.allow if settings.host.ufw else ())
              if rule.split("/")[0].isdigit()}
    return sorted(ports)


def _t1_domains_on(services: Mapping[str, ServiceSpec]) -> tuple[str, ...]:
    return tuple(sorted(f"{s.name} ({d})" for s in services.values() if s.trust_tier == "T1"
                        for d in s.public_domains))


def check_tailnet(doc: Doc, settings: Settings, services: Mapping[str, ServiceSpec]) -> list[SpecError]:
    """Every problem with prodg.yaml's `tailnet:` section, located; [] when it is absent or sound."""
    tailnet = settings.tailnet
    if tailnet is None:
        return []
    errors: list[SpecError] = []
    if settings.integrations.headscale is None:
        errors.append(doc.error(("tailnet",), "needs integrations.headscale: the policy is applied through "
                                              "Headscale's API"))
    if not settings.host.tailscale_ip:
        errors.append(doc.error(("tailnet",), "needs host.tailscale_ip: the policy names the host by it"))
    if not tailnet.operators:
        errors.append(doc.error(("tailnet", "operators"), "must name at least one Headscale user (T1)"))
    for i, name in enumerate(tailnet.operators):
        if not USER_NAME.match(name):
            errors.append(doc.error(("tailnet", "operators", i), f"{name!r} is not a Headscale user name"))
    fronting_t1 = _t1_domains_on(services)
    for i, grant in enumerate(tailnet.grants):
        where = ("tailnet", "grants", i, "service")
        spec = services.get(grant.service)
        if spec is None:
            errors.append(doc.error(where, f"names service {grant.service!r}, which the Compose file does not "
                                           "declare"))
            continue
        if spec.trust_tier == "T1":
            errors.append(doc.error(where, f"{grant.service} is a T1 service: only operators (T1) may reach it"))
            continue
        granted = _granted_ports(spec)
        if not granted:
            errors.append(doc.error(where, f"{grant.service} publishes no port beyond loopback: a tailnet node "
                                           "cannot reach it (publish it on host.tailscale_ip)"))
        elif _serves_t1(spec, services):
            errors.append(doc.error(where, f"{grant.service} serves T1 sites on its ports "
                                           f"({', '.join(fronting_t1)}): only operators (T1) may reach it"))
    if errors:
        return errors
    failing = failing_tests(policy(settings, services))
    return [doc.error(("tailnet",), f"the policy prodg writes fails its own test: {f}") for f in failing]


def _serves_t1(spec: ServiceSpec, services: Mapping[str, ServiceSpec]) -> bool:
    """`spec` is the reverse proxy in front of a T1 service's public domain: it publishes 80 or 443 and a T1 service
    has public domains (Caddy serves every `x-prodg.public` domain on those ports)."""
    return bool(_t1_domains_on(services)) and any(p.container_port in (80, 443) for p in spec.ports)


def _granted_ports(spec: ServiceSpec) -> tuple[int, ...]:
    return tuple(sorted({p.host_port for p in spec.ports if p.host_port and not LOOPBACK.match(p.host_ip)}))


def policy(settings: Settings, services: Mapping[str, ServiceSpec]) -> dict[str, Any]:
    """Headscale's policy (as a JSON value) for `settings.tailnet`; {} when prodg.yaml has no tailnet section."""
    tailnet = settings.tailnet
    if tailnet is None:
        return {}
    t1 = [OPERATORS, TIER_TAGS["T1"]]
    grants: dict[str, set[int]] = {"T2": set(), "T3": set()}
    for grant in tailnet.grants:
        spec = services.get(grant.service)
        if spec is not None and grant.tier in grants:
            grants[grant.tier].update(_granted_ports(spec))
    acls = [{"action": "accept", "src": t1, "dst": ["*:*"]}]
    acls += [{"action": "accept", "src": [TIER_TAGS[tier]],
              "dst": [f"{HOST_ALIAS}:{','.join(str(p) for p in sorted(ports))}"]}
             for tier, ports in sorted(grants.items()) if ports]
    host_ports = reachable_ports(settings, services)
    tests = [{"src": who, "accept": [f"{HOST_ALIAS}:{p}" for p in host_ports] + [f"{TIER_TAGS['T3']}:22"]}
             for who in (tailnet.operators[:1] + (TIER_TAGS["T1"],))]
    for tier, ports in sorted(grants.items()):
        tests.append({"src": TIER_TAGS[tier], "accept": [f"{HOST_ALIAS}:{p}" for p in sorted(ports)],
                      "deny": [f"{HOST_ALIAS}:{p}" for p in host_ports if p not in ports]
                      + [f"{TIER_TAGS['T1']}:22", f"{TIER_TAGS[tier]}:22"]})
    for test in tests:
        if not test["accept"]:
            del test["accept"]
    return {
        "groups": {OPERATORS: list(tailnet.operators)},
        "tagOwners": {tag: [OPERATORS] for tag in TIER_TAGS.values()},
        "hosts": {HOST_ALIAS: f"{settings.host.tailscale_ip}/32"},
        "acls": acls,
        "tests": tests,
    }


def policy_text(value: Mapping[str, Any]) -> str:
    """The policy as the HuJSON file Headscale stores: the header comment, then the JSON."""
    return HEADER + json.dumps(value, indent=2) + "\n"


def _allows(value: Mapping[str, Any], src: str, dst: str) -> bool:
    alias, port = dst.rsplit(":", 1)
    groups = value.get("groups", {})
    for acl in value.get("acls", []):
        if acl.get("action") != "accept":
            continue
        if not any(s in ("*", src) or (s.startswith("group:") and src in groups.get(s, ())) for s in acl["src"]):
            continue
        for target in acl["dst"]:
            t_alias, t_ports = target.rsplit(":", 1)
            if t_alias in ("*", alias) and (t_ports == "*" or port in t_ports.split(",")):
                return True
    return False


def failing_tests(value: Mapping[str, Any]) -> list[str]:
    """Each pair of the policy's `tests` block that its `acls` do not honour, as "SRC → DST: accepted/denied"."""
    out = []
    for test in value.get("tests", []):
        for dst in test.get("accept", []):
            if not _allows(value, test["src"], dst):
                out.append(f"{test['src']} → {dst} is denied, the test says accept")
        for dst in test.get("deny", []):
            if _allows(value, test["src"], dst):
                out.append(f"{test['src']} → {dst} is accepted, the test says deny")
    return out


def standard(text: str) -> Optional[Any]:
    """A HuJSON text as the JSON value it stands for (comments and trailing commas dropped); None when it is not
    HuJSON."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            i = text.find("\n", i) if "\n" in text[i:] else n
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    plain = re.sub(r",(\s*[\]}])", r"\1", "".join(out))
    try:
        return json.loads(plain)
    except ValueError:
        return None
