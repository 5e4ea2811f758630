"""prodg's metrics for the stack's Prometheus (`prodg exporter`), read on each scrape from the Dagster instance's
storage by a process that is not the Dagster daemon: when the daemon stops, its heartbeat goes stale here and the
rules in `config/compose/prometheus/rules/` fire, with no Dagster process alive.

What is exported (docs/WATCHING.md, "Metrics and alert rules"):
- `prodg_daemon_heartbeat_timestamp_seconds{daemon}`: each daemon's last heartbeat (SENSOR, SCHEDULER, …);
- `prodg_last_tick_timestamp_seconds{instigator,kind}`: each sensor's and schedule's newest tick;
- `prodg_service_info{service,commit,image_id}`, `prodg_service_last_deploy_timestamp_seconds{service}` and
  `prodg_service_last_deploy_success{service}` (1, or 0 when the newest run that deployed it failed);
- `prodg_check_passed{asset,check}` and `prodg_check_timestamp_seconds{asset,check}`: each check's newest result;
- `prodg_backup_last_captured_timestamp_seconds{target}`, `prodg_backup_last_bytes{target}`,
  `prodg_backup_last_duration_seconds{target}` (its run's), `prodg_backup_last_partition_info{target,partition}`;
- `prodg_tls_certificate_expiry_timestamp_seconds{domain}`: from the newest TLS materialisation;
- `prodg_exporter_config_loaded`: 1 when the asset graph could be built from the config (else only the Dagster-side
  metrics above are exported).
A restore drill's result is the `restored` check of the target's asset (`prodg_check_passed{check="restored"}`).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import dagster as dg

from ..contract import META_BYTES, META_CAPTURED_AT, META_COMMIT, SERVICE_TAG, TARGET_TAG, TLS_ASSET
from ..listener import Limits, Listener, Reply, Request, same_secret

log = logging.getLogger("prodg.exporter")
GRAPH_REFRESH_S = 60.0  # the asset graph follows the config; a push changes it rarely


@dataclass(frozen=True)
class Graph:
    """What the exporter reports on, from the code location's definitions."""

    services: dict[dg.AssetKey, str] = field(default_factory=dict)  # asset → Compose service
    backups: dict[dg.AssetKey, str] = field(default_factory=dict)  # asset → backup target
    checks: tuple[dg.AssetCheckKey, ...] = ()
    loaded: bool = False


def graph_of(defs: dg.Definitions) -> Graph:
    asset_graph = defs.resolve_asset_graph()
    services, backups = {}, {}
    for key in asset_graph.get_all_asset_keys():
        tags = asset_graph.get(key).tags or {}
        if SERVICE_TAG in tags:
            services[key] = tags[SERVICE_TAG]
        if TARGET_TAG in tags:
            backups[key] = tags[TARGET_TAG]
    checks = tuple(sorted(asset_graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)))
    return Graph(services, backups, checks, loaded=True)


def _value(entry: Optional[dg.EventLogEntry], key: str):
    if entry is None or entry.asset_materialization is None:
        return None
    meta = entry.asset_materialization.metadata.get(key)
    return getattr(meta, "value", meta)


def _timestamp(iso: object) -> Optional[float]:
    try:
        return datetime.datetime.fromisoformat(str(iso)).timestamp()
    except ValueError:
        return None


class InstanceCollector:
    """A prometheus-client collector: one read of the instance per scrape (scrapes are serialised)."""

    def __init__(self, instance: dg.DagsterInstance, load_graph: Callable[[], Graph]):
        self.instance, self._load_graph = instance, load_graph
        self._graph, self._graph_at, self._lock = Graph(), 0.0, threading.Lock()

    def graph(self) -> Graph:
        if time.monotonic() - self._graph_at > GRAPH_REFRESH_S or not self._graph.loaded:
            try:
                self._graph = self._load_graph()
            except Exception as exc:  # noqa: BLE001 (an invalid config: keep the last graph, say so)
                log.warning("the asset graph could not be built (%s); exporting what the instance alone says",
                            type(exc).__name__)
            self._graph_at = time.monotonic()
        return self._graph

    def collect(self) -> Iterator:
        from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily

        with self._lock:
            graph = self.graph()
            loaded = GaugeMetricFamily("prodg_exporter_config_loaded",
                                       "1 when the exporter could build the asset graph from the config")
            loaded.add_metric([], 1.0 if graph.loaded else 0.0)
            yield loaded
            yield from self._daemons(GaugeMetricFamily)
            yield from self._services(graph, GaugeMetricFamily, InfoMetricFamily)
            yield from self._checks(graph, GaugeMetricFamily)
            yield from self._backups(graph, GaugeMetricFamily)
            yield from self._certificates(GaugeMetricFamily)

    def _daemons(self, gauge) -> Iterator:
        beats = gauge("prodg_daemon_heartbeat_timestamp_seconds", "When each Dagster daemon last reported alive",
                      labels=["daemon"])
        for name, beat in sorted(self.instance.get_daemon_heartbeats().items()):
            beats.add_metric([str(name)], float(beat.timestamp))
        yield beats
        ticks = gauge("prodg_last_tick_timestamp_seconds", "Each sensor's and schedule's newest tick",
                      labels=["instigator", "kind"])
        for state in self.instance.all_instigator_state():
            newest = self.instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=1)
            if newest:
                ticks.add_metric([state.instigator_name, state.instigator_type.value.lower()],
                                 float(newest[0].timestamp))
        yield ticks

    def _services(self, graph: Graph, gauge, info) -> Iterator:
        infos = info("prodg_service", "The commit and image of each service's newest deploy", labels=["service"])
        at = gauge("prodg_service_last_deploy_timestamp_seconds", "When each service was last deployed",
                   labels=["service"])
        ok = gauge("prodg_service_last_deploy_success",
                   "1 when the newest run that deployed the service succeeded for it, 0 when it failed",
                   labels=["service"])
        records = self.instance.get_asset_records(list(graph.services)) if graph.services else []
        for record in records:
            service = graph.services.get(record.asset_entry.asset_key)
            entry = record.asset_entry
            latest = entry.last_materialization
            if latest is not None:
                infos.add_metric([service], {"commit": str(_value(latest, META_COMMIT) or ""),
                                             "image_id": str(_value(latest, "image_id") or "")})
                at.add_metric([service], float(latest.timestamp))
            if entry.last_run_id:
                outcome = self._run_outcome(entry.last_run_id, latest)
                if outcome is not None:
                    ok.add_metric([service], outcome)
        yield from (infos, at, ok)

    def _run_outcome(self, run_id: str, latest: Optional[dg.EventLogEntry]) -> Optional[float]:
        if latest is not None and latest.run_id == run_id:
            return 1.0  # materialised by that run
        record = self.instance.get_run_record_by_id(run_id)
        status = record.dagster_run.status.value if record else ""
        return {"FAILURE": 0.0, "SUCCESS": 1.0}.get(status)  # still running or canceled: not reported

    def _checks(self, graph: Graph, gauge) -> Iterator:
        passed = gauge("prodg_check_passed", "1 when the check's newest result passed, 0 when it failed",
                       labels=["asset", "check"])
        when = gauge("prodg_check_timestamp_seconds", "When the check's newest result was recorded",
                     labels=["asset", "check"])
        for key in graph.checks:
            record = self.instance.get_latest_asset_check_evaluation_record(key)
            evaluation = record.event.asset_check_evaluation if record and record.event else None
            if evaluation is None:
                continue
            labels = [key.asset_key.to_user_string(), key.name]
            passed.add_metric(labels, 1.0 if evaluation.passed else 0.0)
            when.add_metric(labels, float(record.event.timestamp))
        yield from (passed, when)

    def _backups(self, graph: Graph, gauge) -> Iterator:
        captured = gauge("prodg_backup_last_captured_timestamp_seconds",
                         "When the newest backup of each target was read from its source", labels=["target"])
        size = gauge("prodg_backup_last_bytes", "Stored bytes of each target's newest backup", labels=["target"])
        took = gauge("prodg_backup_last_duration_seconds", "How long the run of each target's newest backup took",
                     labels=["target"])
        day = gauge("prodg_backup_last_partition_info", "The day of each target's newest backup",
                    labels=["target", "partition"])
        records = self.instance.get_asset_records(list(graph.backups)) if graph.backups else []
        for record in records:
            target = graph.backups.get(record.asset_entry.asset_key)
            latest = record.asset_entry.last_materialization
            stamp = _timestamp(_value(latest, META_CAPTURED_AT))
            if latest is None or stamp is None:
                continue
            captured.add_metric([target], stamp)
            if isinstance(_value(latest, META_BYTES), (int, float)):
                size.add_metric([target], float(_value(latest, META_BYTES)))
            run = self.instance.get_run_record_by_id(latest.run_id)
            if run and run.start_time and run.end_time:
                took.add_metric([target], float(run.end_time - run.start_time))
            partition = latest.dagster_event.partition if latest.dagster_event else None
            day.add_metric([target, partition or ""], 1.0)
        yield from (captured, size, took, day)

    def _certificates(self, gauge) -> Iterator:
        expiry = gauge("prodg_tls_certificate_expiry_timestamp_seconds",
                       "When each public domain's certificate expires (the newest TLS check)", labels=["domain"])
        certificates = _value(self.instance.get_latest_materialization_event(dg.AssetKey(TLS_ASSET)),
                              "certificates")
        for cert in certificates if isinstance(certificates, list) else []:
            stamp = _timestamp(cert.get("not_after")) if isinstance(cert, dict) else None
            if stamp is not None:
                expiry.add_metric([str(cert.get("domain", ""))], stamp)
        yield expiry


def serve(host: str, port: int, token: str, instance: dg.DagsterInstance, load_graph: Callable[[], Graph],
          limits: Limits) -> None:
    """`/metrics` until interrupted. With `token`, a scrape must send `Authorization: Bearer <token>`
    (Prometheus: `authorization.credentials_file`); without one, only a loopback address may be bound."""
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, ProcessCollector, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(instance, load_graph))
    ProcessCollector(namespace="prodg_exporter", registry=registry)  # the exporter's own CPU and memory

    def handle(request: Request) -> Reply:
        if token and not same_secret(request.headers.get("Authorization") or "", f"Bearer {token}"):
            return Reply(401, "a bearer token is required")
        if request.path != "/metrics":
            return Reply(404, "metrics are at /metrics")
        return Reply(200, body=generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    listener = Listener(host, port, handle, name="prodg exporter", limits=limits, authenticated=bool(token),
                        auth_setting="PRODG_METRICS_TOKEN", methods=("GET", "HEAD"))
    log.info("prodg exporter on http://%s:%d/metrics", host, listener.port)
    listener.serve_forever()
