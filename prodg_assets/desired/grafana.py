"""Grafana's provisioning files (a service's bind of a config folder onto /etc/grafana/provisioning), checked as
Grafana would load them, so a broken rule or a dangling reference is a located error at `prodg validate` rather
than a Grafana that starts without its alerts or dashboards. Pure: reads the config tree.

Checked: every YAML file is a mapping with `apiVersion: 1`; datasources have a name, a type and a unique uid;
contact points a known type (Telegram: `bottoken` and `chatid`); every notification policy's receiver (nested routes
too) is a contact point; alert rules a unique uid of at most 40 characters, a title, a `condition` that is one of
their queries, queries on a provisioned datasource (or `__expr__`, whose `expression` names another query), and
durations Grafana parses; dashboard providers a `path` inside the provisioning mount that holds dashboards, and
every dashboard JSON parses, has a unique uid and a title, and queries provisioned datasources only."""

from __future__ import annotations

import json
import posixpath
import re
from typing import Any, Iterator

from .errors import SpecError
from .yamldoc import Doc, load_yaml

MOUNT = "/etc/grafana/provisioning"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w))+$")
CONTACT_TYPES = {"telegram", "email", "webhook", "slack", "discord", "pagerduty", "opsgenie", "teams", "googlechat",
                 "pushover", "victorops", "threema", "line", "kafka", "sensugo", "wecom", "dingding", "webex",
                 "alertmanager", "sns", "oncall", "mqtt"}
NO_DATA_STATES, ERROR_STATES = {"Alerting", "NoData", "OK", "KeepLast"}, {"Alerting", "Error", "OK", "KeepLast"}


def _items(value: Any) -> Iterator[tuple[int, dict]]:
    for i, item in enumerate(value if isinstance(value, list) else []):
        if isinstance(item, dict):
            yield i, item


class _Check:
    def __init__(self, tree, label: str, root: str):
        self.tree, self.label, self.root = tree, label, root.rstrip("/")
        self.errors: list[SpecError] = []
        self.yaml: dict[str, Doc] = {}
        self.json: dict[str, Any] = {}

    def file(self, rel: str) -> str:
        return f"{self.label}/{rel}"

    def load(self) -> None:
        for rel in self.tree.files_under(self.root):
            raw = self.tree.read(rel) or b""
            if rel.endswith((".yml", ".yaml")):
                doc, errors = load_yaml(self.file(rel), raw)
                self.errors += errors
                if doc is None:
                    continue
                if not isinstance(doc.data, dict):
                    self.errors.append(doc.error((), "must be a mapping (Grafana provisioning)"))
                elif doc.data.get("apiVersion") != 1:
                    self.errors.append(doc.error(("apiVersion",), f"must be 1, got {doc.data.get('apiVersion')!r}"))
                else:
                    self.yaml[rel] = doc
            elif rel.endswith(".json"):
                try:
                    self.json[rel] = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    self.errors.append(SpecError(self.file(rel), 1, "(document)", "is not UTF-8"))
                except json.JSONDecodeError as exc:
                    self.errors.append(SpecError(self.file(rel), exc.lineno, "(document)", f"is not JSON: {exc.msg}"))

    def section(self, key: str) -> Iterator[tuple[str, Doc, int, dict]]:
        for rel, doc in self.yaml.items():
            for i, item in _items(doc.data.get(key)):
                yield rel, doc, i, item

    def run(self) -> list[SpecError]:
        self.load()
        uids = self.datasources()
        contacts = self.contact_points()
        self.policies(contacts)
        self.rules(uids)
        self.dashboards(uids)
        return self.errors

    def datasources(self) -> set[str]:
        uids: set[str] = set()
        for _, doc, i, ds in self.section("datasources"):
            for key in ("name", "type", "uid"):
                if not isinstance(ds.get(key), str) or not ds.get(key):
                    self.errors.append(doc.error(("datasources", i, key), f"a datasource needs a {key}"))
            if ds.get("uid") in uids:
                self.errors.append(doc.error(("datasources", i, "uid"), f"uid {ds['uid']!r} is used twice"))
            if isinstance(ds.get("uid"), str):
                uids.add(ds["uid"])
        return uids

    def contact_points(self) -> set[str]:
        names: set[str] = set()
        for _, doc, i, cp in self.section("contactPoints"):
            if not isinstance(cp.get("name"), str) or not cp["name"]:
                self.errors.append(doc.error(("contactPoints", i, "name"), "a contact point needs a name"))
                continue
            names.add(cp["name"])
            for j, receiver in _items(cp.get("receivers")):
                path = ("contactPoints", i, "receivers", j)
                kind = receiver.get("type")
                if kind not in CONTACT_TYPES:
                    self.errors.append(doc.error(path + ("type",), f"unknown contact point type {kind!r}"))
                settings = receiver.get("settings") if isinstance(receiver.get("settings"), dict) else {}
                for key in {"telegram": ("bottoken", "chatid")}.get(kind, ()):
                    if not settings.get(key):
                        self.errors.append(doc.error(path + ("settings",), f"a telegram receiver needs {key}"))
        return names

    def policies(self, contacts: set[str]) -> None:
        def walk(doc: Doc, path: tuple, policy: dict) -> None:
            receiver = policy.get("receiver")
            if receiver is not None and receiver not in contacts:
                self.errors.append(doc.error(path + ("receiver",), f"names contact point {receiver!r}, which no "
                                                                  f"contactPoints entry provisions"))
            for j, route in _items(policy.get("routes")):
                walk(doc, path + ("routes", j), route)

        for _, doc, i, policy in self.section("policies"):
            if "receiver" not in policy:
                self.errors.append(doc.error(("policies", i), "the root policy needs a receiver"))
            walk(doc, ("policies", i), policy)

    def rules(self, uids: set[str]) -> None:
        seen: set[str] = set()
        for _, doc, g, group in self.section("groups"):
            for key in ("name", "folder"):
                if not isinstance(group.get(key), str) or not group.get(key):
                    self.errors.append(doc.error(("groups", g, key), f"a rule group needs a {key}"))
            if "interval" in group and not DURATION.match(str(group["interval"])):
                self.errors.append(doc.error(("groups", g, "interval"), f"not a duration: {group['interval']!r}"))
            for r, rule in _items(group.get("rules")):
                self.rule(doc, ("groups", g, "rules", r), rule, uids, seen)

    def rule(self, doc: Doc, path: tuple, rule: dict, uids: set[str], seen: set[str]) -> None:
        uid = rule.get("uid")
        if not isinstance(uid, str) or not uid or len(uid) > 40:
            self.errors.append(doc.error(path + ("uid",), "an alert rule needs a uid of at most 40 characters"))
        elif uid in seen:
            self.errors.append(doc.error(path + ("uid",), f"uid {uid!r} is used twice"))
        seen.add(str(uid))
        if not rule.get("title"):
            self.errors.append(doc.error(path + ("title",), "an alert rule needs a title"))
        if "for" in rule and not DURATION.match(str(rule["for"])):
            self.errors.append(doc.error(path + ("for",), f"not a duration: {rule['for']!r}"))
        if rule.get("noDataState", "NoData") not in NO_DATA_STATES:
            self.errors.append(doc.error(path + ("noDataState",), f"must be one of {sorted(NO_DATA_STATES)}"))
        if rule.get("execErrState", "Error") not in ERROR_STATES:
            self.errors.append(doc.error(path + ("execErrState",), f"must be one of {sorted(ERROR_STATES)}"))
        queries = {q.get("refId"): (j, q) for j, q in _items(rule.get("data"))}
        if not queries:
            self.errors.append(doc.error(path + ("data",), "an alert rule needs at least one query"))
        if rule.get("condition") not in queries:
            self.errors.append(doc.error(path + ("condition",), f"names query {rule.get('condition')!r}; the "
                                                               f"rule's queries are {sorted(map(str, queries))}"))
        for ref, (j, query) in queries.items():
            where = path + ("data", j)
            source = query.get("datasourceUid")
            model = query.get("model") if isinstance(query.get("model"), dict) else {}
            if source == "__expr__":
                target = model.get("expression")
                if model.get("type") in ("reduce", "threshold", "resample") and target not in queries:
                    self.errors.append(doc.error(where + ("model", "expression"),
                                                 f"names query {target!r}, which this rule does not have"))
            elif source not in uids:
                self.errors.append(doc.error(where + ("datasourceUid",),
                                             f"names datasource {source!r}; provisioned: {sorted(uids)}"))
            elif not model.get("expr"):
                self.errors.append(doc.error(where + ("model", "expr"), f"query {ref!r} has no expression"))

    def dashboards(self, uids: set[str]) -> None:
        folders = []
        for rel, doc, i, provider in self.section("providers"):
            options = provider.get("options") if isinstance(provider.get("options"), dict) else {}
            path = options.get("path")
            inside = isinstance(path, str) and (path == MOUNT or path.startswith(MOUNT + "/"))
            folder = posixpath.normpath(self.root + str(path)[len(MOUNT):]) if inside else ""
            if not inside or ".." in str(path).split("/"):
                self.errors.append(doc.error(("providers", i, "options", "path"),
                                             f"must be a folder inside {MOUNT} (the provisioning mount), got {path!r}"))
            elif not any(r.startswith(folder + "/") for r in self.json):
                self.errors.append(doc.error(("providers", i, "options", "path"),
                                             f"holds no dashboard (.json) in {self.file(folder)}"))
            else:
                folders.append(folder)
        seen: set[str] = set()
        for rel, dash in sorted(self.json.items()):
            if not any(rel.startswith(f + "/") for f in folders):
                continue
            if not isinstance(dash, dict) or not dash.get("title") or not dash.get("uid"):
                self.errors.append(SpecError(self.file(rel), 1, "(document)", "a dashboard needs a uid and a title"))
                continue
            if dash["uid"] in seen:
                self.errors.append(SpecError(self.file(rel), 1, "uid", f"dashboard uid {dash['uid']!r} used twice"))
            seen.add(dash["uid"])
            for i, panel in _items(dash.get("panels")):
                for where, ds in [("datasource", panel.get("datasource"))] + [
                        (f"targets[{j}].datasource", t.get("datasource")) for j, t in _items(panel.get("targets"))]:
                    uid = ds.get("uid") if isinstance(ds, dict) else None
                    if uid is not None and uid not in uids and not str(uid).startswith("$"):
                        self.errors.append(SpecError(self.file(rel), 1, f"panels[{i}].{where}.uid",
                                                     f"names datasource {uid!r}; provisioned: {sorted(uids)}"))


def check_provisioning(tree, label: str, root: str) -> list[SpecError]:
    """Every problem of the Grafana provisioning folder `root` (relative to the config root), located."""
    return _Check(tree, label, root).run()
