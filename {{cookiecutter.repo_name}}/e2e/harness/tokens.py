"""The run's token authority: an RSA key made at session start, its JWKS served in the cluster where the e2e
overlay's RequestAuthentication fetches it, and RS256 JWTs of each kind a contract row may send.

The issuer and the JWKS URI come from the built e2e overlay (RequestAuthentication api-tokens), never from here:
the harness serves what the overlay names.
"""

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from e2e.harness.settings import E2E_OVERLAY, HARNESS_LABEL, JWKS_IMAGE, PROXY_CPU_ANNOTATION, e2e_build
from repo_tools import contract

REQUEST_AUTHENTICATION = "api-tokens"
NO_TOKEN = contract.NO_TOKEN
TOKEN_KINDS = contract.TOKENS[1:]
SUBJECT = contract.TOKEN_SUBJECT
OTHER_ISSUER = contract.OTHER_ISSUER
LIFETIME = 600  # seconds a valid token lasts; an expired one ran out this long ago (far beyond Envoy's 60s skew)
NGINX_PORT = 8080  # where nginx-unprivileged listens
NGINX_ROOT = "/usr/share/nginx/html"
CLUSTER_DOMAIN = ".svc.cluster.local"


@dataclass(frozen=True)
class TokenSettings:
    """What the e2e overlay's RequestAuthentication trusts, and the header its token's subject reaches the
    backend in ("" when it names none)."""

    issuer: str
    jwks_uri: str
    subject_header: str = ""


@dataclass(frozen=True)
class JwksLocation:
    """Where in the cluster a JWKS URI points: Service `service` in `namespace` on `port`, file `path`."""

    namespace: str
    service: str
    port: int
    path: str


def token_settings(docs: list[dict], where: str = f"the {E2E_OVERLAY.name} overlay") -> TokenSettings:
    """The issuer, JWKS URI and subject header of RequestAuthentication api-tokens in a build; ValueError naming
    what is missing otherwise."""
    found = [
        doc
        for doc in docs
        if doc.get("kind") == "RequestAuthentication" and doc.get("metadata", {}).get("name") == REQUEST_AUTHENTICATION
    ]
    if not found:
        raise ValueError(
            f"{where} builds no RequestAuthentication {REQUEST_AUTHENTICATION!r}: the e2e harness serves the JWKS "
            "and mints tokens for the issuer and jwksUri of its spec.jwtRules[0]"
        )
    rules = found[0].get("spec", {}).get("jwtRules") or []
    rule = rules[0] if rules else {}
    missing = [key for key in ("issuer", "jwksUri") if not rule.get(key)]
    if missing:
        raise ValueError(
            f"RequestAuthentication {REQUEST_AUTHENTICATION!r} in {where} has no "
            f"{' or '.join(f'spec.jwtRules[0].{key}' for key in missing)}: the e2e harness needs both"
        )
    header = next(
        (entry["header"] for entry in rule.get("outputClaimToHeaders") or [] if entry.get("claim") == "sub"), ""
    )
    return TokenSettings(rule["issuer"], rule["jwksUri"], header)


def overlay_token_settings() -> TokenSettings:
    return token_settings(e2e_build())


def jwks_location(uri: str) -> JwksLocation:
    """The in-cluster Service a JWKS URI names: http://<service>.<namespace>.svc[.cluster.local][:port]/<file>."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    labels = host.removesuffix(CLUSTER_DOMAIN).removesuffix(".svc").split(".")
    problem = ""
    if parts.scheme != "http":
        problem = "the harness serves it over plain http"
    elif len(labels) != 2 or not all(labels):
        problem = f"the host must be <service>.<namespace>{CLUSTER_DOMAIN}"
    elif parts.path.rstrip("/") == "" or parts.path.endswith("/") or parts.query:
        problem = "the path must name a file, with no query"
    if problem:
        raise ValueError(f"jwksUri {uri!r} is not one the e2e harness can serve: {problem}")
    return JwksLocation(labels[1], labels[0], parts.port or 80, parts.path)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def thumbprint(public_key: rsa.RSAPublicKey) -> str:
    """The key's RFC 7638 thumbprint: its kid."""
    numbers = public_key.public_numbers()
    canonical = json.dumps(
        {"e": b64url_uint(numbers.e), "kty": "RSA", "n": b64url_uint(numbers.n)}, separators=(",", ":")
    )
    return b64url(hashlib.sha256(canonical.encode()).digest())


def jwks(public_key: rsa.RSAPublicKey, kid: str) -> dict:
    numbers = public_key.public_numbers()
    key = {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": "RS256",
        "n": b64url_uint(numbers.n),
        "e": b64url_uint(numbers.e),
    }
    return {"keys": [key]}


def sign(claims: dict, key: rsa.RSAPrivateKey, kid: str) -> str:
    """A compact RS256 JWS of the claims."""
    header = {"alg": "RS256", "typ": "JWT", "kid": kid}
    signing_input = ".".join(b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims))
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input}.{b64url(signature)}"


def claims(kind: str, issuer: str, now: int) -> dict:
    if kind not in TOKEN_KINDS:
        raise ValueError(f"no token of kind {kind!r}: one of {', '.join(TOKEN_KINDS)}")
    issued = now - 2 * LIFETIME if kind == "expired" else now
    return {
        "iss": OTHER_ISSUER if kind == "other-issuer" else issuer,
        "sub": SUBJECT,
        "iat": issued,
        "exp": issued + LIFETIME,
        "jti": uuid.uuid4().hex,
    }


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass(frozen=True)
class Authority:
    key: rsa.RSAPrivateKey  # the key the served JWKS holds
    forger: rsa.RSAPrivateKey  # one it does not: a token signed with it claims the same kid

    @classmethod
    def generate(cls) -> "Authority":
        return cls(new_key(), new_key())

    @property
    def kid(self) -> str:
        return thumbprint(self.key.public_key())

    def jwks(self) -> dict:
        return jwks(self.key.public_key(), self.kid)

    def token(self, kind: str, issuer: str, now: int) -> str:
        return sign(claims(kind, issuer, now), self.forger if kind == "forged" else self.key, self.kid)


def authorization(kind: str, authority: Authority, issuer: str, now: int) -> tuple[tuple[str, str], ...]:
    """The header a request of a row sending a token of `kind` carries: none for "none"."""
    if kind == NO_TOKEN:
        return ()
    return (("Authorization", f"Bearer {authority.token(kind, issuer, now)}"),)


def jwks_server_manifests(location: JwksLocation, document: dict, proxy_cpu: str) -> list[dict]:
    """nginx-unprivileged serving `document` at the location, in a namespace of its own without sidecars (istiod
    fetches it with no mesh identity), labelled as the harness labels its pods."""
    directory, _, filename = location.path.rpartition("/")
    name = location.service
    labels = {"app": name}
    content = json.dumps(document, indent=2)
    container = {
        "name": "nginx",
        "image": JWKS_IMAGE,
        "ports": [{"name": "http", "containerPort": NGINX_PORT}],
        "readinessProbe": {"httpGet": {"path": location.path, "port": "http"}, "periodSeconds": 2},
        "volumeMounts": [{"name": "jwks", "mountPath": f"{NGINX_ROOT}{directory}", "readOnly": True}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": location.namespace, "labels": {"istio-injection": "disabled"}},
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": location.namespace},
            "data": {filename: content},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": location.namespace},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {
                        "labels": labels | {HARNESS_LABEL: "true", "sidecar.istio.io/inject": "false"},
                        # A new JWKS (a new run on a reused cluster) rolls out a pod that serves it at once.
                        "annotations": {
                            PROXY_CPU_ANNOTATION: proxy_cpu,
                            "e2e.harness/jwks-sha256": hashlib.sha256(content.encode()).hexdigest(),
                        },
                    },
                    "spec": {
                        "containers": [container],
                        "volumes": [{"name": "jwks", "configMap": {"name": name}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": location.namespace},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": location.port, "targetPort": "http", "appProtocol": "http"}],
            },
        },
    ]
