"""A certificate issued over ACME for real on kind, the way staging and prod get theirs.

Pebble, Let's Encrypt's test CA, runs in the cluster; its DNS (pebble-challtestsrv) resolves every name to the
ingress gateway's Service, so Pebble fetches the HTTP-01 challenge through the gateway on port 80, where the
route cert-manager adds for it (an HTTPRoute with the Gateway API, an Ingress istiod serves with Istio's own API)
answers beside the repo's own redirect. The Issuer is the repo's ACME Issuer
(apps/components/tls-acme, as the prod overlay renders it) with only its server changed.
"""

import json
from typing import Any

from e2e.harness.settings import Settings
from repo_tools import REPO_ROOT, kustomize
from repo_tools.resources import of_kind, service_fqdn

# https://github.com/letsencrypt/pebble/releases/tag/v2.10.1 (images are tagged without the "v")
PEBBLE_IMAGE = "ghcr.io/letsencrypt/pebble:2.10.1"
CHALLTESTSRV_IMAGE = "ghcr.io/letsencrypt/pebble-challtestsrv:2.10.1"
NAMESPACE = "pebble"
DNS_PORT = 8053
ACME_PORT = 14000
MANAGEMENT_PORT = 15000
ISSUER = "pebble"
CERTIFICATE = "acme-e2e"
SECRET = "acme-e2e-tls"
ACME_OVERLAY = REPO_ROOT / "apps" / "overlays" / "prod"
SMALL = {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}}


def directory_url() -> str:
    return f"https://{service_fqdn(ISSUER, NAMESPACE)}:{ACME_PORT}/dir"


def root_certificate_path() -> str:
    """Pebble's root, fetched through the API server's service proxy (Pebble makes a new one at every start)."""
    return f"/api/v1/namespaces/{NAMESPACE}/services/https:{ISSUER}:{MANAGEMENT_PORT}/proxy/roots/0"


def pebble_config() -> dict:
    """Pebble's own test config, but validating HTTP-01 on port 80, where the gateway listens."""
    return {
        "pebble": {
            "listenAddress": f"0.0.0.0:{ACME_PORT}",
            "managementListenAddress": f"0.0.0.0:{MANAGEMENT_PORT}",
            "certificate": "test/certs/localhost/cert.pem",
            "privateKey": "test/certs/localhost/key.pem",
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }


def deployment(
    name: str, image: str, args: list[str], ports: list[int], container: dict | None = None, pod: dict | None = None
) -> dict:
    main = {
        "name": name,
        "image": image,
        "args": args,
        "ports": [{"containerPort": port} for port in ports],
        "resources": SMALL,
    } | (container or {})
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [main]} | (pod or {})},
        },
    }


def service(name: str, ports: list[tuple[str, int, str]]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": name},
            "ports": [{"name": port_name, "port": port, "protocol": protocol} for port_name, port, protocol in ports],
        },
    }


def ca_manifests(gateway_address: str) -> list[dict]:
    """Pebble and its DNS, answering every name with the gateway's address (and no IPv6, which Pebble tries first)."""
    dns = "pebble-dns"
    challenge_servers_off = ["-http01", "", "-https01", "", "-tlsalpn01", "", "-doh", ""]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "pebble-config", "namespace": NAMESPACE},
            "data": {"pebble-config.json": json.dumps(pebble_config(), indent=2)},
        },
        deployment(
            dns,
            CHALLTESTSRV_IMAGE,
            ["-defaultIPv4", gateway_address, "-defaultIPv6", "", "-dnsserver", f":{DNS_PORT}", *challenge_servers_off],
            [DNS_PORT],
        ),
        service(dns, [("dns-tcp", DNS_PORT, "TCP"), ("dns-udp", DNS_PORT, "UDP")]),
        deployment(
            ISSUER,
            PEBBLE_IMAGE,
            ["-config", "/config/pebble-config.json", "-dnsserver", f"{service_fqdn(dns, NAMESPACE)}:{DNS_PORT}"],
            [ACME_PORT, MANAGEMENT_PORT],
            container={
                # Validate at once, and never reject a good nonce: the run has no time for Pebble's chaos.
                "env": [{"name": "PEBBLE_VA_NOSLEEP", "value": "1"}, {"name": "PEBBLE_WFE_NONCEREJECT", "value": "0"}],
                "volumeMounts": [{"name": "config", "mountPath": "/config"}],
            },
            pod={"volumes": [{"name": "config", "configMap": {"name": "pebble-config"}}]},
        ),
        service(ISSUER, [("acme", ACME_PORT, "TCP"), ("management", MANAGEMENT_PORT, "TCP")]),
    ]


def issuer_and_certificate(settings: Settings) -> list[dict]:
    """The repo's own ACME Issuer pointed at Pebble, and a Certificate for the e2e host from it."""
    repo_issuer = next(doc for doc in of_kind(kustomize.build(ACME_OVERLAY), "Issuer") if "acme" in doc["spec"])
    acme = repo_issuer["spec"]["acme"] | {
        "server": directory_url(),
        # Pebble's listener has a certificate for "localhost" and "pebble" only, from its own test CA.
        "skipTLSVerify": True,
        "privateKeySecretRef": {"name": f"{ISSUER}-acme-account"},
    }
    namespace = settings.gateway.namespace  # the gateway reads TLS secrets only from its own namespace
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": {"name": ISSUER, "namespace": namespace},
            "spec": {"acme": acme},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": {"name": CERTIFICATE, "namespace": namespace},
            "spec": {
                "secretName": SECRET,
                "dnsNames": [settings.host],
                "issuerRef": {"name": ISSUER, "kind": "Issuer"},
            },
        },
    ]


def manifests(settings: Settings, gateway_address: str) -> list[dict]:
    return ca_manifests(gateway_address) + issuer_and_certificate(settings)


def corefile_resolving(corefile: str, host: str, service_fqdn: str) -> str:
    """CoreDNS's Corefile with `host` answered as the gateway's Service inside the cluster.

    cert-manager checks a challenge is reachable before it asks the CA to validate, with the cluster's DNS; a
    public name the cluster cannot resolve to the gateway would keep that check, and the certificate, waiting.
    """
    rewrite = f"rewrite name exact {host} {service_fqdn}"
    if rewrite in corefile:
        return corefile
    server_block = ".:53 {"
    if server_block not in corefile:
        raise ValueError(f"no {server_block!r} server block in CoreDNS's Corefile")
    return corefile.replace(server_block, f"{server_block}\n    {rewrite}", 1)


def https_secret_path(gateway: dict) -> str:
    """The JSON pointer to the TLS secret's name of a Gateway's port 443, in either API."""
    if "listeners" in gateway["spec"]:
        index = next(i for i, listener in enumerate(gateway["spec"]["listeners"]) if listener["port"] == 443)
        return f"/spec/listeners/{index}/tls/certificateRefs/0/name"
    index = next(i for i, server in enumerate(gateway["spec"]["servers"]) if server["port"]["number"] == 443)
    return f"/spec/servers/{index}/tls/credentialName"


def json_pointer_get(document: dict, pointer: str) -> Any:
    node: Any = document
    for part in pointer.lstrip("/").split("/"):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node
