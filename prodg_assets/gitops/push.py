"""A push, told: evaluate the git sensor now instead of at its next tick.

Dagster's sensor daemon evaluates sensors on a loop of at least 5 s plus the sensor's own interval, so a push waits
on average half of that before anything happens. When a hook or a forge webhook says the branch moved
(`prodg notify-push`, or `prodg webhook`), this asks the webserver, over the same GraphQL API the UI's "Test sensor"
dialog uses, to evaluate the git sensor with its current cursor (`sensorDryRun`), launches the run it requests
exactly as the daemon would (the same asset selection and checks, the same tags, the sensor's name and run key),
and stores the new cursor. The daemon's next tick then finds the run key already used by the sensor and skips it, so
a push is deployed once whichever path sees it first; polling stays the fallback when a notification is lost.

When the head changes the asset graph, the evaluation asks for a reload (gitops.reload) and the evaluation is
repeated until the reloaded code location deploys, within `reload_wait_s`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..contract import RUN_KEY_TAG, SENSOR_NAME, SENSOR_NAME_TAG

REPOSITORY = "__repository__"
PUSH_TAG = "prodg/trigger"
RELOADING = "changes the asset graph"  # in the sensor's skip reason while a reload is under way

STATE = """query($sel: SensorSelector!) { sensorOrError(sensorSelector: $sel) { __typename
  ... on Sensor { sensorState { status typeSpecificData { ... on SensorData { lastCursor } } } }
  ... on Error { message } } }"""
DRY_RUN = """mutation($sel: SensorSelector!, $cursor: String) { sensorDryRun(selectorData: $sel, cursor: $cursor) {
  __typename ... on DryRunInstigationTick { evaluationResult { cursor skipReason error { message }
    runRequests { runKey jobName tags { key value } assetSelection { path }
                  assetChecks { assetKey { path } name } } } }
  ... on Error { message } } }"""
EXISTING = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}, limit: 1) { __typename
  ... on Runs { results { runId } } ... on Error { message } } }"""
LAUNCH = """mutation($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId } } ... on Error { message } } }"""
SET_CURSOR = """mutation($sel: SensorSelector!, $cursor: String) { setSensorCursor(sensorSelector: $sel,
  cursor: $cursor) { __typename ... on Error { message } } }"""


class PushError(Exception):
    """The webserver could not be asked, or refused: the push waits for the sensor's next tick."""


@dataclass
class Outcome:
    """What a notification did: the runs it launched (or found launched), or why it launched none."""

    launched: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    skipped: str = ""

    def __str__(self) -> str:
        if self.launched or self.existing:
            parts = [f"launched run {r}" for r in self.launched] + [f"run {r} was already launched"
                                                                   for r in self.existing]
            return "; ".join(parts)
        return f"nothing launched: {self.skipped}"


class Webserver:
    """Dagster's GraphQL endpoint at `url`."""

    def __init__(self, url: str, timeout: float = 60.0):
        import requests  # imported on first use

        self.url, self.timeout, self.session = url.rstrip("/"), timeout, requests.Session()

    def gql(self, query: str, **variables) -> dict:
        import requests

        try:
            resp = self.session.post(f"{self.url}/graphql", json={"query": query, "variables": variables},
                                     timeout=self.timeout)
            resp.raise_for_status()
            body = resp.json()
        except (requests.RequestException, ValueError) as exc:
            raise PushError(f"the Dagster webserver at {self.url} did not answer: {exc}") from None
        if body.get("errors"):
            raise PushError(f"the Dagster webserver at {self.url} refused: {body['errors'][0].get('message')}")
        return body["data"]


def _answer(data: dict, field_name: str) -> dict:
    """The field's answer; an error type (the only ones whose `message` the queries ask for) is a PushError."""
    answer = data[field_name]
    if "message" in answer:
        raise PushError(f"{field_name}: {answer['__typename']}: {answer['message']}")
    return answer


def deploy_now(dagster_url: str, location: str = "prodg", reload_wait_s: float = 120.0,
               poll_s: float = 0.5, sensor: str = SENSOR_NAME, trigger: str = "push") -> Outcome:
    """Evaluate `sensor` (the git sensor unless told) of code location `location` now and launch the run it asks
    for, tagged `prodg/trigger=<trigger>`."""
    web = Webserver(dagster_url)
    sel = {"repositoryName": REPOSITORY, "repositoryLocationName": location, "sensorName": sensor}
    deadline = time.monotonic() + reload_wait_s
    while True:
        state = _answer(web.gql(STATE, sel=sel), "sensorOrError")["sensorState"]
        if state["status"] != "RUNNING":
            return Outcome(skipped=f"the sensor {sensor} is {state['status'].lower()}: turned off in the UI")
        cursor = (state.get("typeSpecificData") or {}).get("lastCursor")
        tick = _answer(web.gql(DRY_RUN, sel=sel, cursor=cursor), "sensorDryRun")
        result = tick.get("evaluationResult") or {}
        if result.get("error"):
            raise PushError(f"the sensor {sensor} failed: {result['error']['message']}")
        requests_ = result.get("runRequests") or []
        reason = result.get("skipReason") or ""
        if not requests_ and RELOADING in reason and time.monotonic() < deadline:
            time.sleep(poll_s)  # the code location is reloading: ask the reloaded one
            continue
        break
    outcome = Outcome(skipped=reason or "the sensor requested no run")
    for request in requests_:
        _launch(web, location, request, outcome, sensor, trigger)
    if result.get("cursor") is not None and result["cursor"] != cursor:
        _answer(web.gql(SET_CURSOR, sel=sel, cursor=result["cursor"]), "setSensorCursor")
    return outcome


def _launch(web: Webserver, location: str, request: dict, outcome: Outcome, sensor: str, trigger: str) -> None:
    key = request["runKey"]
    used = _answer(web.gql(EXISTING, tags=[{"key": RUN_KEY_TAG, "value": key},
                                           {"key": SENSOR_NAME_TAG, "value": sensor}]), "runsOrError")
    if used["results"]:  # the daemon's tick was first
        outcome.existing.append(used["results"][0]["runId"])
        return
    tags = {t["key"]: t["value"] for t in request.get("tags") or []}
    tags.update({SENSOR_NAME_TAG: sensor, RUN_KEY_TAG: key, PUSH_TAG: trigger})
    selector = {"repositoryLocationName": location, "repositoryName": REPOSITORY,
                "jobName": request.get("jobName") or "__ASSET_JOB",
                "assetSelection": [{"path": a["path"]} for a in request.get("assetSelection") or []]}
    if request.get("assetChecks") is not None:
        selector["assetCheckSelection"] = [{"assetKey": {"path": c["assetKey"]["path"]}, "name": c["name"]}
                                           for c in request["assetChecks"]]
    params = {"selector": selector, "executionMetadata": {"tags": [{"key": k, "value": v}
                                                                  for k, v in sorted(tags.items())]}}
    launched = _answer(web.gql(LAUNCH, params=params), "launchRun")
    if launched["__typename"] != "LaunchRunSuccess":
        raise PushError(f"launching the run for {key}: {launched['__typename']}")
    outcome.launched.append(launched["run"]["runId"])
