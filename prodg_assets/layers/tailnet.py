"""The tailnet as Headscale sees it: its control plane answers, its API lists the nodes with their last-seen, and its
policy is the one prodg writes from the trust tiers (desired/tailnet.py) — applied by the `tailnet` asset, compared
by the `tailnet_policy` check on the exposure family's clock."""

import hashlib

import dagster as dg

from ..contract import TAILNET_ASSET, TAILNET_POLICY_CHECK
from ..desired import DesiredState
from ..desired.tailnet import failing_tests, policy, policy_text, standard
from ..gitops.repo import ConfigRepo
from ..gitops.run import state_for_run
from ..secret_source import SecretSource


class HeadscaleApi(dg.ConfigurableResource):
    """Headscale's REST API at `api_base_url`; the API key is read from the secrets source by name when called."""

    api_base_url: str = "http://127.0.0.1:8080"
    api_key_secret: str = "HEADSCALE_API_KEY"
    timeout_s: float = 5.0

    def health(self) -> tuple[bool, str]:
        import requests  # imported on first call: loading the code location does not pay for it

        try:
            resp = requests.get(f"{self.api_base_url.rstrip('/')}/health", timeout=self.timeout_s)
        except requests.RequestException as exc:
            return False, f"control plane unreachable: {type(exc).__name__}"
        return resp.status_code == 200, f"/health answered {resp.status_code}"

    def _call(self, method: str, path: str, secrets: SecretSource, json: dict | None = None):
        """One call of the API with the key from the secrets source; unreachable is a RuntimeError naming only the
        kind of failure."""
        import requests  # imported on first call: loading the code location does not pay for it

        key = secrets.values().get(self.api_key_secret, "")
        try:
            return requests.request(method, f"{self.api_base_url.rstrip('/')}{path}", json=json,
                                    timeout=self.timeout_s, headers={"Authorization": f"Bearer {key}"})
        except requests.RequestException as exc:
            raise RuntimeError(f"Headscale API unreachable: {type(exc).__name__}") from None

    def nodes(self, secrets: SecretSource) -> list[dict]:
        resp = self._call("GET", "/api/v1/node", secrets)
        if resp.status_code != 200:
            raise RuntimeError(f"Headscale API answered {resp.status_code} to GET /api/v1/node")
        return resp.json().get("nodes", [])

    def policy(self, secrets: SecretSource) -> str:
        """The live policy's text ("" when Headscale holds none yet)."""
        resp = self._call("GET", "/api/v1/policy", secrets)
        if resp.status_code == 404:
            return ""
        if resp.status_code != 200:
            raise RuntimeError(f"Headscale API answered {resp.status_code} to GET /api/v1/policy")
        return str(resp.json().get("policy") or "")

    def set_policy(self, secrets: SecretSource, text: str) -> None:
        """Replaces the live policy (Headscale's policy.mode must be `database`); its refusal is raised with
        Headscale's own message, which names what it could not parse."""
        resp = self._call("PUT", "/api/v1/policy", secrets, {"policy": text})
        if resp.status_code != 200:
            try:
                message = str(resp.json().get("message", ""))[:300]
            except ValueError:
                message = ""
            raise RuntimeError(f"Headscale refused the policy (HTTP {resp.status_code}): {message or 'no message'}"
                               " — is policy.mode `database` in Headscale's config?")


def policy_summary(wanted: dict) -> str:
    """Who reaches what, as a Markdown list for the UI."""
    rows = [f"- `{', '.join(acl['src'])}` → `{', '.join(acl['dst'])}`" for acl in wanted.get("acls", [])]
    return "\n".join(rows + ["- anyone else → nothing"])


def tailnet_deps(state: DesiredState) -> list[str]:
    return [s.asset for s in state.services.values() if s.name == "headscale"] or ["docker_network"]


def build_tailnet(state: DesiredState):
    @dg.asset(name=TAILNET_ASSET, group_name="network", deps=tailnet_deps(state), kinds={"headscale"})
    def tailnet(context: dg.AssetExecutionContext, headscale: HeadscaleApi, secrets: SecretSource,
                repo: ConfigRepo) -> dg.MaterializeResult:
        """Headscale's policy made the one prodg writes from `tailnet:` (replaced when the live one means anything
        else), and the tailnet's nodes as its API lists them (name, addresses, tags, online, last seen): nodes join
        by pre-auth key from the clients, with their tier's tag."""
        state, commit = state_for_run(context, repo)
        metadata: dict = {"commit": commit}
        wanted = policy(state.settings, state.services)
        if wanted:
            live = headscale.policy(secrets)
            action = "unchanged"
            if standard(live) != wanted:
                headscale.set_policy(secrets, policy_text(wanted))
                action = "applied" if not live else "replaced"
            context.log.info(f"tailnet policy {action}")
            metadata.update({"policy": action, "policy_sha256": hashlib.sha256(
                policy_text(wanted).encode()).hexdigest(), "who_reaches_what": dg.MetadataValue.md(
                policy_summary(wanted)), "policy_tests": len(wanted.get("tests", []))})
        nodes = headscale.nodes(secrets)
        rows = [{"name": n.get("givenName") or n.get("name"), "ips": ", ".join(n.get("ipAddresses", [])),
                 "tags": ", ".join(sorted(set(n.get("forcedTags") or []) | set(n.get("validTags") or []))),
                 "online": bool(n.get("online")), "last_seen": n.get("lastSeen", "")} for n in nodes]
        metadata.update({"nodes": len(rows), "online": sum(r["online"] for r in rows),
                         "node_list": dg.MetadataValue.json(rows)})
        return dg.MaterializeResult(metadata=metadata)

    @dg.asset_check(asset=TAILNET_ASSET, name="headscale_answers", blocking=False)
    def headscale_answers(context: dg.AssetCheckExecutionContext, headscale: HeadscaleApi,
                          secrets: SecretSource) -> dg.AssetCheckResult:
        """Headscale's control plane answers /health and its API lists the tailnet's nodes with their last-seen."""
        ok, detail = headscale.health()
        problems = [] if ok else [detail]
        rows = []
        try:
            rows = [f"{n.get('givenName') or n.get('name')}: last seen {n.get('lastSeen', 'never')}"
                    for n in headscale.nodes(secrets)]
        except RuntimeError as exc:
            problems.append(str(exc))
        return dg.AssetCheckResult(passed=not problems, metadata={
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "nodes": dg.MetadataValue.md("\n".join(f"- {r}" for r in rows) or "none")})

    @dg.asset_check(asset=TAILNET_ASSET, name=TAILNET_POLICY_CHECK, blocking=False)
    def tailnet_policy(context: dg.AssetCheckExecutionContext, headscale: HeadscaleApi, secrets: SecretSource,
                       repo: ConfigRepo) -> dg.AssetCheckResult:
        """Headscale's live policy is the one prodg writes from prodg.yaml's `tailnet:` section, and its tests (the
        tiers' allow/deny pairs) hold. Red when someone edited it, when Headscale lost it, or before `tailnet` was
        first materialised."""
        state, _ = state_for_run(context, repo)
        wanted = policy(state.settings, state.services)
        if not wanted:
            return dg.AssetCheckResult(passed=True, metadata={"policy": "not prodg's (no tailnet: section)"})
        try:
            live = headscale.policy(secrets)
        except RuntimeError as exc:
            return dg.AssetCheckResult(passed=False, metadata={"problems": dg.MetadataValue.md(f"- {exc}")})
        value = standard(live)
        problems = []
        if not live:
            problems.append("Headscale holds no policy: every node reaches every other (materialise `tailnet`)")
        elif value is None:
            problems.append("the live policy is not HuJSON")
        elif value != wanted:
            differ = sorted(k for k in set(wanted) | set(value) if wanted.get(k) != value.get(k))
            problems.append(f"the live policy differs from prodg's in {', '.join(differ)} (materialise `tailnet` "
                            "to put prodg's back, or change prodg.yaml's tailnet: section)")
        problems += [f"test fails: {f}" for f in failing_tests(value if isinstance(value, dict) else wanted)]
        return dg.AssetCheckResult(passed=not problems, metadata={
            "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none"),
            "who_reaches_what": dg.MetadataValue.md(policy_summary(wanted))})

    if state.settings.tailnet is None:
        return tailnet, headscale_answers
    return tailnet, headscale_answers, tailnet_policy
