"""A stand-in for discovery: answers Consul's GET /v1/health/service/<name>?passing from a fixed list of instances.

FAKE_SERVICES="catalog=8201,8202;user=8101". An instance counts as passing while its /health answers 200 — what
Consul's HTTP check does — so a killed instance drops out and comes back like it would in the real sandbox.
"""

import json
import os
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

INSTANCES: dict[str, list[int]] = {}
for item in filter(None, os.environ.get("FAKE_SERVICES", "").split(";")):
    name, _, ports = item.partition("=")
    INSTANCES[name] = [int(p) for p in ports.split(",") if p]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=0.5) as r:
            return r.status == 200
    except OSError:
        return False


def entry(service: str, port: int) -> dict:
    sid = f"{service}-{port}"
    return {
        "Node": {"Node": "fake", "Address": "127.0.0.1"},
        "Service": {"ID": sid, "Service": service, "Address": "127.0.0.1", "Port": port, "Tags": [], "Meta": {}},
        "Checks": [{"CheckID": f"service:{sid}", "Status": "passing"}],
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/health":
            self.reply(200, {"status": "UP"})
        elif path.startswith("/v1/health/service/"):
            service = path.rsplit("/", 1)[1]
            self.reply(200, [entry(service, p) for p in INSTANCES.get(service, []) if healthy(p)])
        else:
            self.reply(404, {})

    def reply(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Consul-Index", "1")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    server = ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
    print(f"fake discovery listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
