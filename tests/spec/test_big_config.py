"""The big mainframe bench's config (bench/big_config.py, 150 services) is one an operator could push: `prodg validate`
accepts it, and it builds the code location's definitions — one asset per service, in its layer's group — so the
bench measures a config the product takes, and CI notices when the generator or the product stops agreeing."""

from __future__ import annotations

import os
import subprocess
import sys

import dagster as dg

import prodg_assets
from bench.big_config import BED_SERVICES, added_name, write_config
from prodg_assets.desired import LAYERS, DirTree, asset_name, load_desired_state

TOTAL = 150


def test_the_150_service_config_validates_and_builds_one_asset_per_service_by_layer(tmp_path):
    config = write_config(str(tmp_path), TOTAL)
    env = {"PATH": os.environ.get("PATH", "")}
    proc = subprocess.run([sys.executable, "-m", "prodg_assets.cli", "validate", config], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == f"{config}: valid"

    state = load_desired_state(DirTree(config), env)
    assert len(state.services) == TOTAL
    added = [s for s in state.services.values() if s.name.startswith("svc-")]
    assert len(added) == TOTAL - BED_SERVICES
    assert {s.layer for s in added} == set(LAYERS)  # spread over every layer's group
    published = [p for s in state.services.values() for p in s.ports]
    assert published and all(p.host_ip == "127.0.0.1" for p in published), published

    defs = prodg_assets.build_defs({**env, "PRODG_REPO": str(tmp_path)})
    graph = defs.resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    for spec in state.services.values():
        assert groups[asset_name(spec.name)] == spec.layer, spec.name
    last = asset_name(added_name(TOTAL))
    assert last in groups
    # the run a push of the last service asks for resolves (the job subset the sensor's request selects)
    job = defs.resolve_implicit_global_asset_job_def().get_subset(asset_selection={dg.AssetKey(last)})
    assert job.asset_layer.selected_asset_keys == {dg.AssetKey(last)}
