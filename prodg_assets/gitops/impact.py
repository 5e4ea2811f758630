"""Impact of a commit: which assets a change between two desired states touches. Pure."""

from __future__ import annotations

from dataclasses import asdict
from typing import Optional

from ..contract import (
    DNS_ASSET,
    HOST_ASSET,
    NETWORK_ASSET,
    RETIRED_ASSET,
    SECRETS_ASSET,
    TAILNET_ASSET,
    TLS_ASSET,
)
from ..desired import DesiredState
from ..desired.tailnet import policy as tailnet_policy

# prodg.yaml section → the layer assets that read it
SECTION_ASSETS = {
    "host": (HOST_ASSET,),
    "dns": (DNS_ASSET,),
    "tls": (TLS_ASSET,),
    "secrets": (SECRETS_ASSET,),
    "deploy": (RETIRED_ASSET,),
    "backups": (),  # backups run on their own daily schedule
    "notifications": (),
    "integrations": (TAILNET_ASSET,),
    "tailnet": (TAILNET_ASSET,),
}


def impacted_assets(old: Optional[DesiredState], new: DesiredState) -> tuple[set[str], list[str]]:
    """(asset names to materialise, reasons). Services are selected when their resolved spec differs — which covers
    their Compose block, the variables it uses, and the content of config files they bind-mount or build from
    (those enter the spec as digests). `old` None means: everything (first deploy, or history was rewritten)."""
    if old is None:
        return {s.asset for s in new.services.values()} | {HOST_ASSET, NETWORK_ASSET, SECRETS_ASSET,
                                                          RETIRED_ASSET}, ["full reconcile"]
    assets: set[str] = set()
    reasons: list[str] = []
    for name, spec in sorted(new.services.items()):
        before = old.services.get(name)
        if before is None:
            assets.add(spec.asset)
            reasons.append(f"{name}: new service")
        elif asdict(before) != asdict(spec):
            fields = sorted(k for k, v in asdict(spec).items() if asdict(before).get(k) != v)
            assets.add(spec.asset)
            reasons.append(f"{name}: {', '.join(fields)} changed")
    gone = sorted(set(old.services) - set(new.services))
    if gone:
        assets.add(RETIRED_ASSET)
        reasons.append(f"left the spec: {', '.join(gone)}")
    if old.networks != new.networks:
        assets.add(NETWORK_ASSET)
        reasons.append("networks changed")
    for section, layer_assets in SECTION_ASSETS.items():
        if getattr(old.settings, section) != getattr(new.settings, section) and layer_assets:
            assets.update(layer_assets)
            reasons.append(f"prodg.yaml {section} changed")
    if new.settings.tailnet is not None and old.settings.tailnet == new.settings.tailnet \
            and tailnet_policy(old.settings, old.services) != tailnet_policy(new.settings, new.services):
        assets.add(TAILNET_ASSET)
        reasons.append("the tailnet policy changed (a granted service's ports)")
    if old.settings.required_secrets != new.settings.required_secrets:
        assets.add(SECRETS_ASSET)
    return assets, reasons
