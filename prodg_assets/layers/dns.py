"""DNS: the Cloudflare records that point the public domains at the host, kept DNS-only (grey cloud)."""

from typing import Optional

import dagster as dg

from ..contract import DNS_ASSET, DNS_CHECK, HOST_ASSET
from ..gitops.repo import ConfigRepo
from ..gitops.run import state_for_run
from ..secret_source import SecretSource
from ..settings import DnsRecord


class CloudflareDns(dg.ConfigurableResource):
    """Cloudflare's v4 API at `api_base_url`. The API token is read from the secrets source by name
    (`token_secret`) when a call is made; it never enters run config, logs or metadata."""

    api_base_url: str = "https://api.cloudflare.com/client/v4"
    token_secret: str = "CLOUDFLARE_API_TOKEN"
    timeout_s: float = 10.0

    def _call(self, secrets: SecretSource, method: str, path: str, **kw) -> dict:
        import requests  # imported on first call: loading the code location does not pay for it

        token = secrets.values().get(self.token_secret, "")
        try:
            resp = requests.request(method, f"{self.api_base_url.rstrip('/')}{path}", timeout=self.timeout_s,
                                    headers={"Authorization": f"Bearer {token}"}, **kw)
            body = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise RuntimeError(f"Cloudflare API {method} {path}: {type(exc).__name__}") from None
        if resp.status_code >= 400 or not body.get("success"):
            errors = "; ".join(e.get("message", "") for e in body.get("errors", [])) or f"HTTP {resp.status_code}"
            raise RuntimeError(f"Cloudflare API {method} {path}: {errors}")
        return body

    def zone_id(self, secrets: SecretSource, zone: str) -> str:
        result = self._call(secrets, "GET", "/zones", params={"name": zone})["result"]
        if not result:
            raise RuntimeError(f"Cloudflare has no zone {zone!r} for this token")
        return result[0]["id"]

    def records(self, secrets: SecretSource, zone_id: str) -> list[dict]:
        out, page = [], 1
        while True:
            body = self._call(secrets, "GET", f"/zones/{zone_id}/dns_records", params={"page": page, "per_page": 100})
            out += body["result"]
            info = body.get("result_info") or {}
            if page >= int(info.get("total_pages", 1)):
                return out
            page += 1

    def create(self, secrets: SecretSource, zone_id: str, rec: DnsRecord) -> dict:
        return self._call(secrets, "POST", f"/zones/{zone_id}/dns_records",
                          json={"type": rec.type, "name": rec.name, "content": rec.content, "proxied": rec.proxied,
                                "ttl": 1})["result"]

    def update(self, secrets: SecretSource, zone_id: str, record_id: str, rec: DnsRecord) -> dict:
        return self._call(secrets, "PATCH", f"/zones/{zone_id}/dns_records/{record_id}",
                          json={"content": rec.content, "proxied": rec.proxied})["result"]


def _find(live: list[dict], rec: DnsRecord) -> Optional[dict]:
    return next((r for r in live if r.get("name") == rec.name and r.get("type") == rec.type), None)


def record_problems(wanted: tuple[DnsRecord, ...], live: list[dict]) -> list[str]:
    problems = []
    for rec in wanted:
        found = _find(live, rec)
        if found is None:
            problems.append(f"{rec.name} {rec.type} is missing")
            continue
        if found.get("content") != rec.content:
            problems.append(f"{rec.name} points at {found.get('content')}, expected {rec.content}")
        if found.get("proxied"):
            problems.append(f"{rec.name} is proxied (orange cloud); it must be DNS-only for ACME HTTP-01")
    return problems


@dg.asset(name=DNS_ASSET, group_name="network", deps=[HOST_ASSET], kinds={"cloudflare"})
def dns_records(context: dg.AssetExecutionContext, cloudflare: CloudflareDns, secrets: SecretSource,
                repo: ConfigRepo) -> dg.MaterializeResult:
    """The Cloudflare records of prodg.yaml `dns.records` (the public domains → the host's IP), converged: a missing
    record is created, one pointing elsewhere or proxied is corrected to DNS-only. Records not in the spec are left
    alone."""
    state, commit = state_for_run(context, repo)
    zone = cloudflare.zone_id(secrets, state.settings.dns.zone)
    live = cloudflare.records(secrets, zone)
    actions = []
    for rec in state.settings.dns_records:
        found = _find(live, rec)
        if found is None:
            cloudflare.create(secrets, zone, rec)
            actions.append(f"created {rec.name} {rec.type} {rec.content}")
        elif found.get("content") != rec.content or bool(found.get("proxied")) != rec.proxied:
            cloudflare.update(secrets, zone, found["id"], rec)
            actions.append(f"corrected {rec.name}: {found.get('content')} proxied={found.get('proxied')} -> "
                           f"{rec.content} proxied={rec.proxied}")
    for line in actions:
        context.log.info(line)
    return dg.MaterializeResult(metadata={
        "commit": commit, "action": "changed" if actions else "unchanged",
        "changes": dg.MetadataValue.md("\n".join(f"- {a}" for a in actions) or "none"),
        "records": len(state.settings.dns_records)})


@dg.asset_check(asset=DNS_ASSET, name=DNS_CHECK, blocking=False)
def dns_only_and_pointing_at_host(context: dg.AssetCheckExecutionContext, cloudflare: CloudflareDns,
                                  secrets: SecretSource, repo: ConfigRepo) -> dg.AssetCheckResult:
    """Every declared record exists, points at the host, and is DNS-only (not proxied)."""
    state, _ = state_for_run(context, repo)
    try:
        zone = cloudflare.zone_id(secrets, state.settings.dns.zone)
        problems = record_problems(state.settings.dns_records, cloudflare.records(secrets, zone))
    except RuntimeError as exc:
        problems = [str(exc)]
    return dg.AssetCheckResult(passed=not problems, metadata={
        "problems": dg.MetadataValue.md("\n".join(f"- {p}" for p in problems) or "none")})
