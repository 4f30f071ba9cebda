"""Run as `python -m forked_service`: a stand-in server that says how it was started.

GET /health answers 200; GET /whoami answers what a test compares between a program msa_cli.supervise ran in a
forked supervisord and the same program started by execve: its pids, who imported its dependency, its title, its
environment. On SIGTERM it prints without flushing and exits through the interpreter's normal exit path.
"""

import atexit
import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

import preloaded_dependency


def whoami() -> dict:
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = [part.decode() for part in f.read().split(b"\0") if part]
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "dependency_imported_in": preloaded_dependency.IMPORTED_IN,
        "cmdline": cmdline,
        "instance": os.environ.get("INSTANCE_ID"),
        "supervisor_process_name": os.environ.get("SUPERVISOR_PROCESS_NAME"),
        "argv": sys.argv[1:],
        "main": __name__,
        "sigint_handler": getattr(signal.getsignal(signal.SIGINT), "__name__", None),
        "sighup_default": signal.getsignal(signal.SIGHUP) == signal.SIG_DFL,
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = {"/health": {"status": "UP"}, "/whoami": whoami()}.get(self.path)
        data = json.dumps(body).encode()
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, stop)
    atexit.register(lambda: sys.stdout.write("atexit ran\n"))  # unflushed: only the exit path writes it out
    server = HTTPServer((os.environ.get("HOST", "127.0.0.1"), int(os.environ["PORT"])), Handler)
    print(f"listening on {server.server_address[1]}, args {sys.argv[1:]}", flush=True)
    server.serve_forever()
