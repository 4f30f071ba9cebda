"""The access log: one JSON line per proxied request, on stdout (where supervisord puts it in the gateway's log).

Not through `logging`: a record, a formatter and a handler's lock and flush per request cost more than the rest of
the line, and stdout is a pipe to supervisord — a write into a full pipe (supervisord busy, or descheduled on a
busy machine) would stop the event loop, and every request in flight with it. So the event loop only appends a
finished line to a deque; a writer thread takes them in batches and does the (blocking, GIL-free) writes.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
import time

PIPE_BUF = 4096  # writes up to this size are atomic on a pipe: ours never split another writer's line
BATCH_S = 0.05  # how long the writer lets lines gather before writing them


class AccessLog:
    def __init__(self, service: str, instance: str, fd: int | None = None) -> None:
        self.envelope = f'"level": "INFO", "service": {json.dumps(service)}, "instance": {json.dumps(instance)}, ' \
                        f'"logger": "access", '
        self.fd = sys.stdout.fileno() if fd is None else fd
        self._lines: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._stop = False
        self._second = -1
        self._stamp = ""
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def write(self, method: str, path: str, route: str | None, upstream: str, status: int, user: str,
              trace_id: str, ms: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a request
            self._second, self._stamp = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        self._lines.append(
            f'{{"ts": "{self._stamp}.{int((now - second) * 1000):03d}Z", {self.envelope}"method": "{method}", '
            f'"path": {json.dumps(path)}, "route": {json.dumps(route)}, "upstream": {json.dumps(upstream)}, '
            f'"status": {status}, "user": {json.dumps(user)}, "trace_id": "{trace_id}", "ms": {ms}}}\n')
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        while not self._stop:
            self._wake.wait()
            time.sleep(BATCH_S)
            self._wake.clear()
            self._flush()

    def _flush(self) -> None:
        lines = self._lines
        batch: list[bytes] = []
        size = 0
        while lines:
            line = lines.popleft().encode()
            if size + len(line) > PIPE_BUF and batch:
                self._write(b"".join(batch))
                batch, size = [], 0
            batch.append(line)
            size += len(line)
        if batch:
            self._write(b"".join(batch))

    def _write(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.fd, data):]
        except OSError:
            pass  # stdout gone (the supervisor stopped): nothing to log to

    def close(self) -> None:
        """Write what is left (at shutdown)."""
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=1)
        self._flush()
