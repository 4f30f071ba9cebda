"""``python -m msa_config_server`` as a real process: environment variables in, Spring's API out."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.integration
def test_module_entrypoint_serves_the_repo_from_env(write_repo) -> None:
    repo = write_repo(**{"catalog.yml": "a: 1\n"})
    port = free_port()
    env = {**os.environ, "CONFIG_REPO": str(repo), "PORT": str(port), "HOST": "127.0.0.1",
           "ENCRYPT_KEY": "k", "LOG_LEVEL": "warning"}
    process = subprocess.Popen([sys.executable, "-m", "msa_config_server"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).json() == {"status": "UP"}:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        assert httpx.get(f"http://127.0.0.1:{port}/catalog-default.properties").text == "a: 1"
        assert httpx.get(f"http://127.0.0.1:{port}/encrypt/status").json() == {"status": "OK"}
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=10)  # also closes the pipe
        print(output.decode(errors="replace"))  # shown by pytest only when the test failed
