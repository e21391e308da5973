"""What runs in place of a container image on the local data plane, standard library only (it is copied into the
run's directory and started with the system's Python inside the pod's network namespace):

    python3 standins.py echo PORT POD          the echo server (jmalloc/echo-server): who served, the request line
                                               and every header, one per line
    python3 standins.py files PORT DIRECTORY   a static file server (nginx serving a ConfigMap)
    python3 standins.py postgres PORT          answers the PostgreSQL SSLRequest with "N" (no TLS), then closes
    python3 standins.py httpbin PORT PREFIX    go-httpbin's /status/<codes> and /delay/<seconds> below PREFIX

They stand in for the app, never for the mesh: every request reaches them through real Envoy proxies.
"""

import http.server
import os
import random
import socketserver
import sys
import time


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def canonical(name: str) -> str:
    """Go's canonical header key, as jmalloc/echo-server prints it: X-Forwarded-Client-Cert."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in name.split("-"))


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # the body follows the headers at once, not after the peer's delayed ACK
    pod = ""

    def answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        lines = [f"Request served by {self.pod}", "", f"{self.command} {self.path} {self.request_version}", ""]
        lines += sorted(f"{canonical(name)}: {value}" for name, value in self.headers.items())
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = answer

    def log_message(self, format: str, *args: object) -> None:
        sys.stderr.write(f"{self.command} {self.path}\n")


class HttpBin(Echo):
    prefix = ""

    def answer(self) -> None:
        path = self.path.split("?", 1)[0]
        if not path.startswith(self.prefix + "/"):
            return super().answer()
        route, _, argument = path.removeprefix(self.prefix + "/").partition("/")
        if route == "status":
            choices = [part.split(":") for part in argument.split(",")]
            codes = [int(choice[0]) for choice in choices]
            weights = [float(choice[1]) if len(choice) > 1 else 1.0 for choice in choices]
            status = random.choices(codes, weights)[0]
        elif route == "delay":
            time.sleep(float(argument))
            status = 200
        else:
            status = 404
        body = f"{status}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer


class Postgres(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        if len(self.request.recv(8)) == 8:
            self.request.sendall(b"N")


class TcpServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv: list[str]) -> None:
    kind, port = argv[0], int(argv[1])
    address = ("0.0.0.0", port)
    if kind == "echo":
        Echo.pod = argv[2]
        Server(address, Echo).serve_forever()
    elif kind == "httpbin":
        HttpBin.pod, HttpBin.prefix = os.environ.get("HOSTNAME", ""), argv[2].rstrip("/")
        Server(address, HttpBin).serve_forever()
    elif kind == "files":
        directory = argv[2]

        class Files(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=directory, **kwargs)

        Server(address, Files).serve_forever()
    elif kind == "postgres":
        TcpServer(address, Postgres).serve_forever()
    else:
        raise SystemExit(f"no stand-in called {kind!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
