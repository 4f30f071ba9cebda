"""`python -m msa_kit.healthcheck [path]`: exit 0 when this container's program answers 200 on its own port.

The image's HEALTHCHECK (Dockerfile): the slim image has no curl, and the standard library starts in ~20 ms where
importing the kit would take half a second. Reads PORT (every program listens there) and asks loopback.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def healthy(port: int, path: str = "/health", timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/health"
    port = int(os.environ.get("PORT") or 0)
    if not port:
        print("PORT is not set", file=sys.stderr)
        return 2
    return 0 if healthy(port, path) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
