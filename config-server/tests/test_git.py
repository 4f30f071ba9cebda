"""A git-backed repository: the label picks a branch, tag or commit; the version is the commit id."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def git(root: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.com", GIT_CONFIG_NOSYSTEM="1", HOME=str(root))
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env, check=True)
    return out.stdout.strip()


@pytest.fixture
def git_repo(tmp_path: Path) -> dict[str, str]:
    root = tmp_path / "repo"
    root.mkdir()
    git(root, "init", "-q", "-b", "main")
    (root / "application.yml").write_text("greeting: v1\n")
    (root / "catalog.yml").write_text("page-size: 10\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "v1")
    v1 = git(root, "rev-parse", "HEAD")
    git(root, "checkout", "-q", "-b", "feature/eu")
    (root / "catalog-eu.yml").write_text("page-size: 25\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "eu")
    eu = git(root, "rev-parse", "HEAD")
    git(root, "checkout", "-q", "main")
    (root / "application.yml").write_text("greeting: v2\n")
    git(root, "commit", "-q", "-am", "v2")
    v2 = git(root, "rev-parse", "HEAD")
    git(root, "tag", "release-1", v1)
    return {"root": str(root), "v1": v1, "v2": v2, "eu": eu}


def greeting(body: dict) -> str:
    return next(s["source"]["greeting"] for s in body["propertySources"] if "greeting" in s["source"])


async def test_label_selects_branch_tag_and_commit(git_repo, client_for) -> None:
    root = Path(git_repo["root"])
    async with client_for(root) as client:
        head = (await client.get("/catalog/eu")).json()
        main = (await client.get("/catalog/eu/main")).json()
        branch = (await client.get("/catalog/eu/feature(_)eu")).json()  # Spring's "(_)" stands for '/'
        tag = (await client.get("/catalog/eu/release-1")).json()
        commit = (await client.get(f"/catalog/eu/{git_repo['v1']}")).json()
        short = (await client.get(f"/catalog/eu/{git_repo['v1'][:8]}")).json()
        labelled_doc = await client.get("/feature(_)eu/catalog-eu.properties")
    assert head["label"] is None and head["version"] == git_repo["v2"] and greeting(head) == "v2"
    assert main["label"] == "main" and main["version"] == git_repo["v2"]
    assert branch["label"] == "feature/eu" and branch["version"] == git_repo["eu"]
    assert [s["name"] for s in branch["propertySources"]] == [
        f"file://{root.resolve()}/{name}" for name in ("catalog-eu.yml", "catalog.yml", "application.yml")]
    assert branch["propertySources"][0]["source"] == {"page-size": 25} and greeting(branch) == "v1"
    assert tag["version"] == commit["version"] == short["version"] == git_repo["v1"]
    assert greeting(commit) == "v1" and len(commit["propertySources"]) == 2
    assert labelled_doc.text == "greeting: v1\npage-size: 25"


async def test_working_tree_edits_show_without_a_commit(git_repo, client_for) -> None:
    root = Path(git_repo["root"])
    (root / "application.yml").write_text("greeting: uncommitted\n")
    async with client_for(root) as client:
        assert greeting((await client.get("/catalog/default")).json()) == "uncommitted"
        assert greeting((await client.get("/catalog/default/main")).json()) == "v2"


@pytest.mark.parametrize("label", ["nope", "--output=x", "main~99"])
async def test_unknown_label_is_404(git_repo, client_for, label: str) -> None:
    async with client_for(Path(git_repo["root"])) as client:
        response = await client.get(f"/catalog/default/{label}")
        document = await client.get(f"/{label}/catalog-default.yml")
    for r in (response, document):
        assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
        assert r.json()["title"] == "No such label"


async def test_subdirectory_of_a_git_repository(tmp_path: Path, client_for) -> None:
    root = tmp_path / "mono"
    (root / "config-repo").mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    (root / "config-repo" / "catalog.yml").write_text("a: committed\n")
    git(root, "add", ".")
    git(root, "commit", "-q", "-m", "c")
    (root / "config-repo" / "catalog.yml").write_text("a: edited\n")
    async with client_for(root / "config-repo") as client:
        assert (await client.get("/catalog-default.properties")).text == "a: edited"
        assert (await client.get("/main/catalog-default.properties")).text == "a: committed"
