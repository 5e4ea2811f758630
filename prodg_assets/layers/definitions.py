"""The layers' slice of definitions: the host, network, secrets, DNS, tailnet and TLS layer assets with their checks,
and one asset plus its checks per Compose service, grouped by layer."""

from __future__ import annotations

import dagster as dg

from ..contract import CHECK_FAMILIES
from ..desired import DesiredState
from .dns import dns_only_and_pointing_at_host, dns_records
from .host import exposure, host_baseline, host_conforms, host_safe_to_deploy, no_root_below_t1
from .network import (
    docker_network,
    network_matches,
    no_retired_services,
    retired_services,
)
from .secrets import secrets_complete_and_private, secrets_env
from .service_checks import PROBES, build_service_check, build_tls_asset
from .services import build_exposure_check, build_healthy_check, build_in_sync_check, build_service_asset
from .tailnet import build_tailnet


def layer_definitions(state: DesiredState) -> dg.Definitions:
    assets: list = [host_baseline, docker_network, secrets_env, retired_services]
    checks: list = [host_conforms, host_safe_to_deploy, exposure, no_root_below_t1, network_matches,
                    secrets_complete_and_private, no_retired_services]
    assets += [build_service_asset(state, spec) for spec in state.services.values()]
    checks += [build_service_check(spec) for spec in state.services.values() if spec.name in PROBES]
    checks += [build_in_sync_check(spec) for spec in state.services.values()]
    checks += [build_exposure_check(spec) for spec in state.services.values()]
    checks += [build_healthy_check(state, spec) for spec in state.services.values()]
    if state.settings.dns_records:
        assets.append(dns_records)
        checks.append(dns_only_and_pointing_at_host)
    if state.settings.integrations.headscale is not None:
        tailnet_asset, *tailnet_checks = build_tailnet(state)
        assets.append(tailnet_asset)
        checks.extend(tailnet_checks)
    if any(s.layer == "tls" for s in state.services.values()):
        tls_asset, tls_check = build_tls_asset(state)
        assets.append(tls_asset)
        checks.append(tls_check)
    return dg.Definitions(assets=assets, asset_checks=checks)


def watched_checks(layers: dg.Definitions) -> dict[str, list[dg.AssetCheckKey]]:
    """Each check family (contract.CHECK_FAMILIES) → the keys of its checks among the layers' definitions; a
    service's own probe (service_checks.PROBES) belongs to "health"."""
    family_of = {name: family for family, names in CHECK_FAMILIES.items() for name in names}
    family_of.update({probe[0]: "health" for probe in PROBES.values()})
    out: dict[str, list[dg.AssetCheckKey]] = {family: [] for family in CHECK_FAMILIES}
    for checks in layers.asset_checks or []:
        for key in checks.check_keys:
            if key.name in family_of:
                out[family_of[key.name]].append(key)
    return {family: sorted(keys, key=lambda k: (k.asset_key.to_user_string(), k.name)) for family, keys in out.items()}
