"""HTTPS to the gateway on 127.0.0.1 with the public host as SNI, verified against the test CA."""

import base64
import http.client
import socket
import ssl
from dataclasses import dataclass

import requests
import trustme
import yaml
from cryptography import x509
from requests.adapters import HTTPAdapter


class HostnameAdapter(HTTPAdapter):
    """Connects wherever the URL says but sends `server_hostname` as SNI and checks the certificate for it.

    urllib3 sends no SNI for an IP address; setting server_hostname in the pool manager fixes both the
    SNI and the name the certificate is verified against.
    """

    def __init__(self, server_hostname: str, **kwargs) -> None:
        self.server_hostname = server_hostname
        super().__init__(**kwargs)

    def init_poolmanager(self, *args, **kwargs) -> None:
        kwargs["server_hostname"] = self.server_hostname
        super().init_poolmanager(*args, **kwargs)


def get(
    scheme: str, address: str, port: int, host: str, path: str, ca_file: str | None, timeout: float = 5.0
) -> requests.Response:
    """GET scheme://host{path}, sent to address:port; never follows redirects."""
    return send("GET", scheme, address, port, host, path, ca_file, timeout=timeout)


def send(
    method: str,
    scheme: str,
    address: str,
    port: int,
    host: str,
    path: str,
    ca_file: str | None,
    headers: tuple[tuple[str, str], ...] = (),
    timeout: float = 5.0,
    body: bytes | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    """A request with extra headers (and a body) to scheme://host{path}, sent to address:port; never follows
    redirects. A session from `session_for` keeps its connection for the next request."""
    session = session or session_for(scheme, address, port, host)
    return session.request(
        method,
        f"{scheme}://{address}:{port}{path}",
        headers={**dict(headers), "Host": host},
        data=body,
        verify=ca_file if scheme == "https" else True,
        allow_redirects=False,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Answer:
    status: int
    text: str
    location: str


def send_verbatim(
    method: str,
    scheme: str,
    address: str,
    port: int,
    host: str,
    path: str,
    ca_file: str | None,
    headers: tuple[tuple[str, str], ...] = (),
    timeout: float = 5.0,
) -> Answer:
    """A request whose path reaches the gateway exactly as written: requests (urllib3) resolves "." and ".."
    segments before sending, which would hide the gateway's own path normalization from a test of it."""
    if scheme == "https":
        context = ssl.create_default_context(cafile=ca_file)
        connection: http.client.HTTPConnection = http.client.HTTPSConnection(
            address, port, timeout=timeout, context=context
        )
        connection.sock = context.wrap_socket(socket.create_connection((address, port), timeout), server_hostname=host)
    else:
        connection = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        for name, value in (("Host", host), *headers):
            connection.putheader(name, value)
        connection.endheaders()
        response = connection.getresponse()
        return Answer(response.status, response.read().decode(errors="replace"), response.getheader("location", ""))
    finally:
        connection.close()


def presented_certificate(address: str, port: int, server_name: str, timeout: float = 5.0) -> tuple[bytes | None, str]:
    """The certificate (DER) a TLS server presents for SNI `server_name`, unverified; (None, why) when the handshake
    ends without one. A server with no certificate for the name may reset the connection or close it mid-handshake:
    either way there is none."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with (
            socket.create_connection((address, port), timeout) as raw,
            context.wrap_socket(raw, server_hostname=server_name) as connection,
        ):
            return connection.getpeercert(binary_form=True), ""
    except OSError as error:  # ssl.SSLError, resets and EOFs are all OSErrors
        return None, f"{type(error).__name__}: {error}"


def dns_names(certificate: bytes) -> list[str]:
    alternative_names = x509.load_der_x509_certificate(certificate).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    return alternative_names.value.get_values_for_type(x509.DNSName)


def session_for(scheme: str, address: str, port: int, host: str) -> requests.Session:
    session = requests.Session()
    if scheme == "https":
        session.mount(f"https://{address}:{port}", HostnameAdapter(host))
    return session


def ca_secret_manifest(ca: trustme.CA, name: str, namespace: str) -> str:
    """The kubernetes.io/tls secret a cert-manager CA Issuer signs with."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": base64.b64encode(ca.cert_pem.bytes()).decode(),
            "tls.key": base64.b64encode(ca.private_key_pem.bytes()).decode(),
        },
    }
    return yaml.safe_dump(secret)
