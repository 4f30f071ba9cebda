"""Workshop 9 — break a contract and watch it caught (workshop/09-break-a-contract.md).

The twin of the page: in a temporary copy of a service's sources (put first on the path, so the checkout is never
touched), make the page's careless changes and run what CI runs — `msa contracts check` for an event, catalog's
provider verification for an HTTP answer — and see each fail naming the field and the consumer; then make the change
the right way (a new version) and see what the check asks for next."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from msa_cli.spec import repo_root

ROOT = repo_root()


def copy_of(service: str, tmp_path: Path) -> Path:
    src = tmp_path / service
    shutil.copytree(ROOT / "services" / service / "src", src)
    return src


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path.name} no longer has {old!r}: update the workshop page and its twin"
    path.write_text(text.replace(old, new, 1))


def run(args: list[str], src: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(src), "COLUMNS": "200"}  # ahead of the checkout's .pth entries
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_renaming_a_field_of_an_event_is_caught_and_a_new_version_is_the_way(tmp_path: Path):
    src = copy_of("order", tmp_path)
    model = src / "order" / "domain" / "events.py"
    # Step 1: rename `total` to `amount` in OrderPlaced (v2).
    edit(model, "    lines: list[OrderLine]\n    total: Money\n", "    lines: list[OrderLine]\n    amount: Money\n")
    checked = run(["-m", "msa_cli", "contracts", "check"], src)
    assert checked.returncode == 1
    assert "breaking change to a published version (`total` removed; `amount` is new and required)" in \
        checked.stderr, checked.stderr
    assert "catalog reads order.placed v2 as OrderPlacedV2: requires `total`, which the producer does not send" \
        in checked.stderr
    # Step 2: the same change as v3: the check now asks for the consumers first, and for v2 to stay on file.
    edit(model, "    version: ClassVar[int] = 2  #", "    version: ClassVar[int] = 3  #")
    checked = run(["-m", "msa_cli", "contracts", "check"], src)
    assert checked.returncode == 1
    assert "catalog reads order.placed v2, but order publishes v3: teach catalog v3 first" in checked.stderr
    assert "events/order.placed.v3.schema.json is missing: run `make contracts`" in checked.stderr
    assert "events/order.placed.v2.schema.json: no event makes it any more" in checked.stderr
    assert "breaking" not in checked.stderr


def test_renaming_a_field_of_an_http_answer_fails_the_providers_verification(tmp_path: Path):
    src = copy_of("catalog", tmp_path)
    http = src / "catalog" / "entrypoints" / "http.py"
    # Step 3: rename the field in catalog's answers (still read from the domain's price_cents).
    edit(http, "    price_cents: int\n    stock: int",
         '    price: int = Field(validation_alias="price_cents")\n    stock: int')
    verified = run(["-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "services/catalog/tests/contract/test_catalog_provider.py::"
                    "test_catalog_honours_every_pact_that_names_it"], src)
    assert verified.returncode == 1, verified.stdout
    assert "missing the following keys: price_cents" in verified.stdout, verified.stdout[-3000:]
