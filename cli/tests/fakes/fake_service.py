"""A stand-in server: answers GET /health with 200 on $PORT after $FAKE_START_DELAY seconds.

Enough to prove the runner's behaviour (waiting, restarts, clean stops) without the real servers.
"""

import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = os.environ.get("INSTANCE_ID", "fake")


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = (200, {"status": "UP", "instance": INSTANCE}) if self.path == "/health" else (404, {})
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:  # keep the logs to what the tests look for
        pass


if __name__ == "__main__":
    # Slow start on purpose: up() must wait for it, not merely for the process to exist.
    time.sleep(float(os.environ.get("FAKE_START_DELAY", "0")))
    server = ThreadingHTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)
    print(f"{INSTANCE} listening on {server.server_address[1]}", flush=True)
    server.serve_forever()
