"""The gateway's limits over real traffic, for the contract rows that go past one (request.exceeds): a burst past an
API route's rate limit meets 429 with the rate-limit headers and is admitted again once the bucket refills, the
home page takes the same burst; a body or headers one byte past the limit are refused, after the same request at the limit
passed. The gateway's access log is JSON with the request's id, route and subject, and never the token."""

import dataclasses
import json
import math
import time
import uuid

import pytest
import requests

from e2e.harness import bringup, scenarios, tls, tokens, traffic
from repo_tools import contract, edge, layout, resilience
from repo_tools.contract import Row

ROWS = [row for row in contract.load() if row.request.exceeds]
RATE_LIMITED = [row for row in ROWS if row.request.exceeds == "rate-limit" and row.expected == "rate-limited"]
NOT_RATE_LIMITED = [row for row in ROWS if row.request.exceeds == "rate-limit" and row.expected != "rate-limited"]
BURST_SECONDS = 120.0  # long enough to empty a bucket from one client on a busy runner, not to hang
REFILL_MARGIN = 1.0  # seconds past one token's refill: scheduling on a busy 2-vCPU runner
LOG_FLUSH_SECONDS = 2.0  # Envoy flushes access logs to stdout once a second


def limit_of_route(row: Row) -> edge.Limit:
    verdict = traffic.offline_verdict(row)
    assert verdict.outcome == "rate-limited", f"offline, {row.name!r} is not rate limited in e2e: {verdict.because}"
    limits = edge.rate_limits(traffic.e2e_build(), layout.ingress_gateway())
    return next(limit for name, limit in limits.items() if f"route {name} admits" in verdict.because)


class Client:
    """The row's request, over one kept connection, with a fresh token each time."""

    def __init__(self, harness, ca_file: str, row: Row) -> None:
        self.harness, self.ca_file, self.row = harness, ca_file, row
        s = harness.settings
        self.port = s.https_node_port if row.request.scheme == "https" else s.http_node_port
        self.session = tls.session_for(row.request.scheme, "127.0.0.1", self.port, s.host)

    def send(self, extra_headers: tuple[tuple[str, str], ...] = (), body: bytes | None = None) -> requests.Response:
        request = self.row.request
        headers = (*request.headers, *self.harness.token_headers(request.token), *extra_headers)
        return tls.send(
            request.method,
            request.scheme,
            "127.0.0.1",
            self.port,
            self.harness.settings.host,
            request.path,
            self.ca_file,
            headers,
            timeout=10.0,
            body=body,
            session=self.session,
        )


def warm_up(harness, ca_file: str, row: Row) -> None:
    """The row's request without the excess holds as its contract row would: the route is there and admits it."""
    plain = dataclasses.replace(row, request=dataclasses.replace(row.request, exceeds=""), traffic=None)
    verdict = traffic.offline_verdict(plain)
    probe = scenarios.probe_for(dataclasses.replace(plain, expected=verdict.outcome), harness.settings, {}, verdict)
    harness.eventually_holds(lambda: bringup.probe_once(harness, probe, ca_file))


@pytest.mark.parametrize("row", RATE_LIMITED, ids=lambda row: row.name)
def test_a_burst_past_the_rate_limit_meets_429_and_is_admitted_again_as_the_bucket_refills(row, harness, ca_file):
    limit = limit_of_route(row)
    per_second = limit.value / resilience.seconds(limit.window)  # Envoy refills the bucket continuously
    warm_up(harness, ca_file, row)
    client = Client(harness, ca_file, row)
    pods = harness.gateway_pods()
    admitted, started = 0, time.monotonic()
    while time.monotonic() - started < BURST_SECONDS:
        response = client.send()
        if response.status_code == 429:
            break
        assert response.status_code == 200, f"request {admitted + 1} of the burst: {response.status_code}"
        assert response.headers.get("x-ratelimit-limit") == str(limit.value), dict(response.headers)
        admitted += 1
    elapsed = time.monotonic() - started
    harness.figures.append(
        f"burst on {row.request.path}: {admitted + 1} requests in {elapsed:.1f}s, "
        f"{(admitted + 1) / elapsed:.0f} requests/s through the gateway, {admitted} admitted before the 429"
    )
    assert response.status_code == 429, (
        f"{admitted} requests in {elapsed:.0f}s, none refused: the route admits {limit.describe('requests')}; "
        f"a client slower than {per_second * pods:g} requests a second never empties the buckets"
    )
    # Each gateway pod's bucket: what it held, and what it gained while the burst ran.
    most = pods * (limit.value + per_second * elapsed)
    assert admitted <= most, f"{admitted} requests admitted in {elapsed:.1f}s, more than {most:.0f}"
    assert response.headers.get("x-ratelimit-remaining") == "0", dict(response.headers)
    time.sleep(1 / per_second + REFILL_MARGIN)
    again = client.send()
    assert again.status_code == 200, f"{1 / per_second + REFILL_MARGIN:.1f}s after the 429: {again.status_code}"


@pytest.mark.parametrize("row", NOT_RATE_LIMITED, ids=lambda row: row.name)
def test_a_route_without_a_limit_takes_the_same_burst(row, harness, ca_file):
    limits = edge.rate_limits(traffic.e2e_build(), layout.ingress_gateway())
    burst = max(limit.value for limit in limits.values()) + 1
    warm_up(harness, ca_file, row)
    client = Client(harness, ca_file, row)
    started = time.monotonic()
    statuses = [client.send().status_code for _ in range(burst)]
    elapsed = time.monotonic() - started
    harness.figures.append(
        f"burst on {row.request.path}: {burst} requests in {elapsed:.1f}s, {burst / elapsed:.0f} requests/s "
        "through the gateway, no limit"
    )
    assert set(statuses) == {200}, f"{burst} requests: {sorted(set(statuses))}"


@pytest.mark.parametrize("row", [row for row in ROWS if row.request.exceeds == "body-limit"], ids=lambda row: row.name)
def test_a_body_one_byte_past_the_limit_is_refused_after_one_at_the_limit_passed(row, harness, ca_file):
    limit = edge.body_limit(traffic.e2e_build(), layout.ingress_gateway())
    assert limit is not None, "the e2e overlay sets no body limit"
    warm_up(harness, ca_file, row)
    client = Client(harness, ca_file, row)
    at_the_limit = client.send(body=b"a" * limit.value)
    assert at_the_limit.status_code == 200, f"a body of {limit.value} bytes: {at_the_limit.status_code}"
    past = client.send(body=b"a" * (limit.value + 1))
    assert past.status_code == 413, f"a body of {limit.value + 1} bytes: {past.status_code}"


@pytest.mark.parametrize(
    "row", [row for row in ROWS if row.request.exceeds == "header-limit"], ids=lambda row: row.name
)
def test_headers_past_the_limit_are_refused_after_smaller_ones_passed(row, harness, ca_file):
    limit = edge.header_limit(traffic.e2e_build(), layout.ingress_gateway())
    warm_up(harness, ca_file, row)
    client = Client(harness, ca_file, row)
    # The request line, the host and the token take a little of the limit; half of it leaves them room.
    within = client.send((("x-e2e-padding", "a" * (limit.value * 1024 // 2)),))
    assert within.status_code == 200, f"headers of half {limit.describe('KiB')}: {within.status_code}"
    past = client.send((("x-e2e-padding", "a" * (limit.value * 1024 + 1)),))
    assert past.status_code == 431, f"headers over {limit.describe('KiB')}: {past.status_code}"


def test_the_gateway_logs_the_request_id_route_and_subject_as_json_and_never_the_token(harness, ca_file):
    row = next(row for row in contract.load() if row.request.token == "valid" and not row.request.headers)
    warm_up(harness, ca_file, row)
    authorization = dict(harness.token_headers("valid"))["Authorization"]
    tag = f"e2e-{uuid.uuid4().hex[:16]}"
    s = harness.settings
    response = tls.send(
        "GET",
        "https",
        "127.0.0.1",
        s.https_node_port,
        s.host,
        traffic.tagged(row.request.path, tag),
        ca_file,
        (("Authorization", authorization),),
    )
    assert response.status_code == 200, response.status_code
    seen_id = traffic.served_request_id(response.text)
    assert seen_id, response.text
    time.sleep(LOG_FLUSH_SECONDS)
    gateway = s.gateway
    output = harness.proxy_logs(gateway.namespace, gateway.selector)
    # Each line comes prefixed with its pod ("[pod/NAME/istio-proxy] {...}"): the JSON object starts at the brace.
    entries = [json.loads(line[line.index("{") :]) for line in output.splitlines() if "{" in line and seen_id in line]
    assert len(entries) == 1, f"gateway log lines with request id {seen_id}: {entries}"
    entry = entries[0]
    verdict = traffic.offline_verdict(row).because
    route = traffic.ROUTE_IN_VERDICT.search(verdict)
    assert route is not None, f"offline, {row.name!r} takes no route: {verdict}"
    assert (entry["subject"], entry["route"]) == (tokens.SUBJECT, route.group(1)), (entry, verdict)
    token = authorization.removeprefix("Bearer ")
    assert token not in output and tag not in output, "the gateway's log holds the token or the query string"
    assert math.isfinite(float(entry["duration_ms"]))
