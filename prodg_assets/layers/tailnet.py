"""The tailnet as Headscale sees it: its control plane answers, and its API lists the nodes with their last-seen."""

import dagster as dg

from ..contract import TAILNET_ASSET
from ..desired import DesiredState
from ..engine.secrets import SecretSource
from ..gitops.repo import ConfigRepo
from ..gitops.run import state_for_run


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

    def nodes(self, secrets: SecretSource) -> list[dict]:
        import requests  # imported on first call: loading the code location does not pay for it

        key = secrets.values().get(self.api_key_secret, "")
        try:
            resp = requests.get(f"{self.api_base_url.rstrip('/')}/api/v1/node", timeout=self.timeout_s,
                                headers={"Authorization": f"Bearer {key}"})
        except requests.RequestException as exc:
            raise RuntimeError(f"Headscale API unreachable: {type(exc).__name__}") from None
        if resp.status_code != 200:
            raise RuntimeError(f"Headscale API answered {resp.status_code} to GET /api/v1/node")
        return resp.json().get("nodes", [])


def tailnet_deps(state: DesiredState) -> list[str]:
    return [s.asset for s in state.services.values() if s.name == "headscale"] or ["docker_network"]


def build_tailnet(state: DesiredState):
    @dg.asset(name=TAILNET_ASSET, group_name="network", deps=tailnet_deps(state), kinds={"headscale"})
    def tailnet(context: dg.AssetExecutionContext, headscale: HeadscaleApi, secrets: SecretSource,
                repo: ConfigRepo) -> dg.MaterializeResult:
        """The tailnet's nodes as Headscale's API lists them (name, addresses, online, last seen). Observed, not
        changed: nodes join by pre-auth key from the clients."""
        _, commit = state_for_run(context, repo)
        nodes = headscale.nodes(secrets)
        rows = [{"name": n.get("givenName") or n.get("name"), "ips": ", ".join(n.get("ipAddresses", [])),
                 "online": bool(n.get("online")), "last_seen": n.get("lastSeen", "")} for n in nodes]
        return dg.MaterializeResult(metadata={"commit": commit, "nodes": len(rows),
                                              "online": sum(r["online"] for r in rows),
                                              "node_list": dg.MetadataValue.json(rows)})

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

    return tailnet, headscale_answers
