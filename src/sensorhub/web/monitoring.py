"""`/healthz` and `/metrics`, and the HTTP metrics of every request.

gunicorn runs several worker processes: under `sensorhub web` each keeps its counters in prometheus_client's
multiprocess files (sensorhub.telemetry), and `/metrics` adds them up, whichever worker answers. The ingest
client's figures come from the file it replaces every second, re-exported as they are while it is fresh.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from sensorhub.config import Settings
from sensorhub.telemetry import MULTIPROC_ENV, STALE_AFTER, client_metrics_path
from sensorhub.web.api import doc_path
from sensorhub.web.overview import current_health
from sensorhub.web.state import web_state

logger = logging.getLogger(__name__)

bp = Blueprint("monitoring", __name__)

METRICS_EXTENSION = "sensorhub.metrics"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpMetrics:
    """Requests per route, method and status, and their durations."""

    def __init__(self) -> None:
        # Under gunicorn, values live in the multiprocess files, and this registry is not what /metrics reads.
        self.registry = CollectorRegistry()
        self.requests = Counter("sensorhub_http_requests", "HTTP requests answered, per route, method and status.",
                                ["route", "method", "status"], registry=self.registry)
        self.duration = Histogram("sensorhub_http_request_duration_seconds", "Time to answer an HTTP request "
                                  "(until its headers, for streamed CSV exports), per route and method.",
                                  ["route", "method"], buckets=DURATION_BUCKETS, registry=self.registry)


class _Registry(Collector):
    """Another registry's metrics, as one collector."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterable[Metric]:
        """Whatever the registry holds."""
        return self.registry.collect()


class ClientFile(Collector):
    """The ingest client's metrics file, while it is fresh; `sensorhub_client_up` says whether it was."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[Metric]:
        """The client's families, then sensorhub_client_up."""
        text = ""
        try:
            if time.time() - self.path.stat().st_mtime <= STALE_AFTER:
                text = self.path.read_text()
        except OSError:
            pass
        families = []
        if text:
            try:
                families = list(text_string_to_metric_families(text))
            except ValueError as err:  # cannot happen with prometheus_client on both sides; say it if it does
                logger.warning("unreadable client metrics file %s: %s", self.path, err)
        yield from families
        yield GaugeMetricFamily("sensorhub_client_up", "1 while the ingest client's metrics are fresh (it runs).",
                                value=1 if families else 0)


def init_app(app: Flask) -> None:
    """Measure every request and serve /healthz and /metrics (before any other before_request hook)."""
    app.extensions[METRICS_EXTENSION] = HttpMetrics()
    app.before_request_funcs.setdefault(None, []).insert(0, _started)
    app.after_request(_measured)
    app.register_blueprint(bp)


def _started() -> None:
    g.sensorhub_started = time.perf_counter()


def _measured(response: Response) -> Response:
    started = g.pop("sensorhub_started", None)
    if started is not None:
        metrics: HttpMetrics = current_app.extensions[METRICS_EXTENSION]
        route = doc_path(request.url_rule.rule) if request.url_rule is not None else "(no route)"
        metrics.requests.labels(route, request.method, str(response.status_code)).inc()
        metrics.duration.labels(route, request.method).observe(time.perf_counter() - started)
    return response


def _peer() -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address (an IPv4 address seen through an IPv6 socket as itself)."""
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _has_token(settings: Settings) -> bool:
    """Whether the request carries SENSORHUB_METRICS_TOKEN as a bearer token."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return bool(settings.metrics_token) and scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), settings.metrics_token.encode())


def may_see_health_details(settings: Settings) -> bool:
    """The server itself (loopback) or a holder of the metrics token: the checks' details name hosts and ports."""
    peer = _peer()
    return (peer is not None and peer.is_loopback) or _has_token(settings)


def may_scrape(settings: Settings) -> bool:
    """A holder of the metrics token, or an address of SENSORHUB_METRICS_FROM."""
    peer = _peer()
    return _has_token(settings) or (peer is not None and any(
        peer.version == network.version and peer in network for network in settings.metrics_networks))


@bp.get("/healthz")
def healthz() -> tuple[Response, int]:
    """Health: 200 if the database answers, the broker is reachable and the ingest client runs; 503 naming what is
    wrong otherwise (with the details only for the server itself or the metrics token)."""
    settings = web_state().settings
    found = current_health(settings)
    response = jsonify(found.as_json(details=may_see_health_details(settings)))
    response.headers["Cache-Control"] = "no-store"
    return response, 200 if found.ok else 503


@bp.get("/metrics")
def metrics() -> Response:
    """Metrics in the Prometheus text format: the web server's and the ingest client's."""
    settings = web_state().settings
    if not may_scrape(settings):
        if settings.metrics_token:
            return Response("/metrics needs the token of SENSORHUB_METRICS_TOKEN\n", status=401,
                            content_type="text/plain; charset=utf-8",
                            headers={"WWW-Authenticate": 'Bearer realm="sensorhub metrics"'})
        return Response("/metrics is not open to this address (SENSORHUB_METRICS_FROM)\n", status=403,
                        content_type="text/plain; charset=utf-8")
    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Registry(current_app.extensions[METRICS_EXTENSION].registry))
    registry.register(ClientFile(client_metrics_path(settings)))
    # The text format, or OpenMetrics when the scraper asks for it (Prometheus does).
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encode(registry), content_type=content_type, headers={"Cache-Control": "no-store"})
