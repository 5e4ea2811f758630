"""Two deploys never touch one service at once, whatever the storage: eight runs deploying Redis, launched at the
same instant on the embedded SQLite instance with no concurrency pools configured, apply one after another."""

import subprocess
import threading
import time

import dagster as dg
import pytest

from tests.conftest import PRODG_CLI, ROOT, Testbed

pytestmark = pytest.mark.docker

RUNS = 8


class Lifecycle:
    """The creates and destroys of the bed's Redis containers, read from the Engine's event stream live (the Engine
    keeps only a short backlog of past events, which a busy shared Engine overruns)."""

    def __init__(self, bed: Testbed):
        self.seen: list[tuple[str, str]] = []
        self.stream = bed.client.events(decode=True, filters={
            "type": "container", "event": ["create", "destroy"],
            "label": [f"prodg.project={bed.project}", "prodg.service=redis"]})
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        try:
            for event in self.stream:
                self.seen.append((event["Action"], event["id"]))
        except Exception:  # noqa: BLE001 — the stream closed
            pass

    def actions(self, expected: int, wait_s: float = 60) -> list[str]:
        """What was seen, once `expected` events arrived (or after a bounded wait for late ones)."""
        deadline = time.monotonic() + wait_s
        while len(self.seen) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        self.stream.close()
        return [action for action, _ in self.seen]


def test_eight_deploys_of_one_service_at_once_apply_one_after_another(testbed: Testbed, tmp_path):
    bed = testbed
    assert bed.materialize(selection="docker_network,secrets_env,redis").success
    shas = []
    for n in range(RUNS):
        bed.edit("compose/docker-compose.yml", "      REDIS_PASSWORD: ${REDIS_PASSWORD}\n",
                 f"      REDIS_PASSWORD: ${{REDIS_PASSWORD}}\n      TURN_{n}: \"{n}\"\n")
        shas.append(bed.commit(f"redis: turn {n}"))
    home = tmp_path / "home"
    home.mkdir()  # no dagster.yaml: SQLite storage, no pools — nothing in Dagster keeps these runs apart
    env = {**bed.env, "DAGSTER_HOME": str(home)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.get_runs()  # create the storage once, before eight processes race to migrate it
    lifecycle = Lifecycle(bed)
    procs = [subprocess.Popen([*PRODG_CLI, "deploy", "--commit", sha, "--select", "redis"], env=env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for sha in shas]
    outputs = [p.communicate(timeout=540)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[-2000:] for p, o in zip(procs, outputs) if p.returncode]
    # every run recreated Redis (each commit holds another TURN_n), each apply whole before the next began: the
    # Engine saw create, destroy (the container it replaced), create, destroy, … — never two creates in a row
    actions = lifecycle.actions(expected=2 * RUNS)
    assert actions == ["create", "destroy"] * RUNS, actions
    assert any("another run is applying it" in o for o in outputs)  # and the runs did meet
    live = bed.containers()["redis"]
    assert live.status == "running" and live.labels["prodg.commit"] in shas
