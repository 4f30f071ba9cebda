from __future__ import annotations

from pathlib import Path
from typing import Callable

import httpx
import pytest

from msa_config_server import create_app

WriteRepo = Callable[..., Path]


@pytest.fixture
def write_repo(tmp_path: Path) -> WriteRepo:
    """Write files into a fresh temporary config repository: write_repo(**{"catalog.yml": "..."})."""
    root = tmp_path / "config-repo"
    root.mkdir(exist_ok=True)

    def write(**files: str) -> Path:
        for name, text in files.items():
            (root / name).write_text(text)
        return root

    return write


@pytest.fixture
def client_for() -> Callable[..., httpx.AsyncClient]:
    def make(repo: Path, **kwargs: object) -> httpx.AsyncClient:
        app = create_app(repo, **kwargs)  # type: ignore[arg-type]
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://config")

    return make

