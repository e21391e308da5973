"""The local control plane's parts that need none of its programs: how a failing component is reported, what the
bring-up changes in the rendered install, how a model is held to a real object, and Envoy's route selection."""

import pytest
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from google.protobuf import json_format

from e2e.controlplane import envoy_routes
from e2e.controlplane.bringup import local_documents, pointed_at_local_istiod
from e2e.controlplane.cluster import ComponentFailed, ControlPlane
from e2e.controlplane.compare import disagreements


@pytest.mark.bake_independent
def test_a_component_that_exits_stops_the_run_naming_it_its_last_log_lines_and_how_to_run_it_again(tmp_path):
    plane = ControlPlane({}, tmp_path, "kubectl")
    process = plane.process("etcd", ["sh", "-c", "echo member failed to start; exit 3"], environment={"A": "1"})
    with pytest.raises(ComponentFailed) as failed:
        plane.wait_until(process, lambda: False, "serving")
    message = str(failed.value)
    assert message.startswith("etcd exited with status 3") and "member failed to start" in message
    assert "To run it again by hand: A=1 sh -c echo member failed to start; exit 3" in message
    plane.stop()
    assert not tmp_path.exists()


@pytest.mark.bake_independent
def test_a_component_that_never_gets_ready_is_stopped_with_the_group_it_started(tmp_path, monkeypatch):
    monkeypatch.setattr("e2e.controlplane.cluster.START_SECONDS", 0.5)
    plane = ControlPlane({}, tmp_path, "kubectl")
    process = plane.process("kube-apiserver", ["sh", "-c", "sleep 60 & sleep 60"])
    with pytest.raises(ComponentFailed, match="kube-apiserver was not ready within 0s"):
        plane.wait_until(process, lambda: False, "ready")
    plane.stop()
    assert process.popen is not None and process.popen.poll() is not None


def test_istiods_own_workload_and_cert_managers_webhooks_are_left_out_and_istiods_webhooks_call_it_locally():
    docs = [
        {"kind": "Deployment", "metadata": {"name": "istiod", "namespace": "istio-system"}},
        {"kind": "Service", "metadata": {"name": "istiod", "namespace": "istio-system"}},
        {"kind": "ValidatingWebhookConfiguration", "metadata": {"name": "cert-manager-webhook"}, "webhooks": []},
        {"kind": "Deployment", "metadata": {"name": "istiod", "namespace": "elsewhere"}},
    ]
    kept = local_documents(docs, "istio-system")
    assert [(d["kind"], d["metadata"].get("namespace")) for d in kept] == [
        ("Service", "istio-system"),
        ("Deployment", "elsewhere"),
    ]
    webhook = {
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "istio-sidecar-injector"},
        "webhooks": [{"name": "a", "clientConfig": {"service": {"name": "istiod", "path": "/inject"}}}],
    }
    pointed = pointed_at_local_istiod(webhook, 15017)
    assert pointed["webhooks"][0]["clientConfig"] == {"url": "https://localhost:15017/inject"}
    assert "url" not in webhook["webhooks"][0]["clientConfig"]  # the render is left as it was


def test_a_model_disagrees_where_it_states_a_value_the_real_object_lacks_or_holds_otherwise():
    real = {"spec": {"containers": [{"name": "a", "image": "x", "ports": [1]}], "replicas": 2}, "status": {}}
    assert disagreements({"spec": {"containers": [{"name": "a", "image": "x"}]}}, real) == []
    assert disagreements({"spec": {"containers": [{"name": "a", "image": "y"}]}}, real) == [
        ".spec.containers[a].image: the model has 'y', the real object 'x'"
    ]
    assert disagreements({"spec": {"containers": [{"name": "b"}]}}, real) == [
        ".spec.containers[b]: in the model, not in the real object (it has ['a'])"
    ]
    assert disagreements({"spec": {"paused": True}}, real) == [
        ".spec.paused: the model has True, the real object has no such field"
    ]


def routes() -> envoy_routes.ProxyConfig:
    listener = json_format.ParseDict(
        {
            "name": "0.0.0.0_443",
            "address": {"socket_address": {"address": "0.0.0.0", "port_value": 443}},
            "filter_chains": [
                {
                    "filter_chain_match": {"server_names": ["shop.example.com"]},
                    "filters": [
                        {
                            "name": envoy_routes.HTTP_CONNECTION_MANAGER,
                            "typed_config": {
                                "@type": "type.googleapis.com/envoy.extensions.filters.network."
                                "http_connection_manager.v3.HttpConnectionManager",
                                "stat_prefix": "https",
                                "rds": {"route_config_name": "https.443"},
                            },
                        }
                    ],
                }
            ],
        },
        listener_pb2.Listener(),
    )
    route_config = json_format.ParseDict(
        {
            "name": "https.443",
            "virtual_hosts": [
                {
                    "name": "shop",
                    "domains": ["shop.example.com", "shop.example.com:*"],
                    "routes": [
                        {
                            "name": "canary",
                            "match": {
                                "path_separated_prefix": "/api",
                                "headers": [{"name": "x-canary", "string_match": {"exact": "always"}}],
                            },
                            "route": {"cluster": "outbound|80||canary.shop.svc.cluster.local", "timeout": "15s"},
                        },
                        {
                            "name": "api",
                            "match": {"path_separated_prefix": "/api"},
                            "route": {
                                "weighted_clusters": {
                                    "clusters": [
                                        {"name": "outbound|80||stable.shop.svc.cluster.local", "weight": 75},
                                        {"name": "outbound|80||canary.shop.svc.cluster.local", "weight": 25},
                                    ]
                                },
                                "retry_policy": {"retry_on": "connect-failure", "num_retries": 2},
                            },
                        },
                        {"name": "home", "match": {"prefix": "/"}, "route": {"cluster": "outbound|80||web.shop"}},
                    ],
                }
            ],
        },
        route_pb2.RouteConfiguration(),
    )
    return envoy_routes.ProxyConfig([listener], {"https.443": route_config})


@pytest.mark.parametrize(
    ("path", "headers", "route", "clusters"),
    [
        (
            "/api/orders",
            {},
            "api",
            {"outbound|80||stable.shop.svc.cluster.local": 75, "outbound|80||canary.shop.svc.cluster.local": 25},
        ),
        ("/api", {"X-Canary": "always"}, "canary", {"outbound|80||canary.shop.svc.cluster.local": 100}),
        ("/apiary", {}, "home", {"outbound|80||web.shop": 100}),
    ],
)
def test_envoys_route_selection_takes_the_first_route_whose_path_and_headers_match(path, headers, route, clusters):
    decision = envoy_routes.route(routes(), 443, "shop.example.com", path, "GET", headers)
    assert decision.kind == "route" and decision.detail.endswith(f"/ {route}") and decision.clusters == clusters


def test_a_name_no_filter_chain_serves_gets_no_route_and_a_policy_reads_as_the_verifier_writes_it():
    assert envoy_routes.route(routes(), 443, "other.example.com", "/", "GET", {}).kind == "no-route"
    api = envoy_routes.route(routes(), 443, "shop.example.com", "/api/x", "GET", {})
    assert (
        api.policy is not None
        and envoy_routes.canonical(api.policy).describe() == "timeout none, 2 retries on connect-failure"
    )
    canary = envoy_routes.route(routes(), 443, "shop.example.com", "/api", "GET", {"x-canary": "always"})
    assert canary.policy is not None and envoy_routes.canonical(canary.policy).describe() == "timeout 15s, no retries"
    assert envoy_routes.cluster_host("outbound|80|v1|backend.shop.svc.cluster.local") == (
        "backend.shop.svc.cluster.local",
        "v1",
    )
