"""The HTTP API against a temporary directory repository, through httpx's in-process ASGI transport."""

from __future__ import annotations

import json

import yaml

from msa_config_server.crypto import TextEncryptor

KEY = "test-encrypt-key"
FILES = {
    "application.yml": "server:\n  port: 8080\nmanagement:\n  endpoints: [health, metrics]\n"
                       "banner: port ${server.port}\n",
    "catalog.yml": "catalog:\n  page-size: 20\nserver:\n  port: 8201\n",
    "catalog-dev.yml": "catalog:\n  page-size: 5\n",
}


async def test_environment_document_shape(write_repo, client_for) -> None:
    repo = write_repo(**FILES)
    async with client_for(repo) as client:
        response = await client.get("/catalog/dev")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["name", "profiles", "label", "version", "state", "propertySources"]
    assert body["name"] == "catalog" and body["profiles"] == ["dev"] and body["label"] is None
    assert body["state"] is None and isinstance(body["version"], str)
    assert body["propertySources"] == [
        {"name": f"file:{repo}/catalog-dev.yml", "source": {"catalog.page-size": 5}},
        {"name": f"file:{repo}/catalog.yml", "source": {"catalog.page-size": 20, "server.port": 8201}},
        {"name": f"file:{repo}/application.yml", "source": {
            "server.port": 8080, "management.endpoints[0]": "health", "management.endpoints[1]": "metrics",
            "banner": "port ${server.port}"}},  # placeholders are the client's job in this view
    ]


async def test_no_matching_files_is_an_empty_environment(write_repo, client_for) -> None:
    async with client_for(write_repo()) as client:
        body = (await client.get("/nobody/default")).json()
    assert body["propertySources"] == [] and body["profiles"] == ["default"]


async def test_yml_json_properties_documents(write_repo, client_for) -> None:
    repo = write_repo(**FILES)
    expected = {"banner": "port 8201", "catalog": {"page-size": 5},
                "management": {"endpoints": ["health", "metrics"]}, "server": {"port": 8201}}
    async with client_for(repo) as client:
        yml, yaml_, js, props = [await client.get(f"/catalog-dev.{ext}") for ext in ("yml", "yaml", "json",
                                                                                       "properties")]
        labelled = await client.get("/main/catalog-dev.yml")  # label ignored by a plain directory
        raw = await client.get("/catalog-dev.properties", params={"resolvePlaceholders": "false"})
    assert yaml.safe_load(yml.text) == yaml.safe_load(yaml_.text) == yaml.safe_load(labelled.text) == expected
    assert yml.headers["content-type"].startswith("text/plain")
    assert json.loads(js.text) == expected and js.headers["content-type"] == "application/json"
    assert props.text == ("banner: port 8201\ncatalog.page-size: 5\nmanagement.endpoints[0]: health\n"
                          "management.endpoints[1]: metrics\nserver.port: 8201")
    assert "banner: port ${server.port}" in raw.text


async def test_hyphenated_application_name_splits_at_last_hyphen(write_repo, client_for) -> None:
    repo = write_repo(**{"api-gateway-dev.yml": "routes: 3\n"})
    async with client_for(repo) as client:
        assert (await client.get("/api-gateway-dev.properties")).text == "routes: 3"


async def test_cipher_values_decrypted_or_reported_invalid(write_repo, client_for) -> None:
    ciphertext = TextEncryptor(KEY).encrypt("db-pass")
    repo = write_repo(**{"catalog.yml": f"db:\n  user: app\n  password: '{{cipher}}{ciphertext}'\n"
                                        "api:\n  token: '{cipher}deadbeef00'\n"})
    async with client_for(repo, encrypt_key=KEY) as client:
        source = (await client.get("/catalog/default")).json()["propertySources"][0]["source"]
    assert source == {"db.user": "app", "db.password": "db-pass", "invalid.api.token": "<n/a>"}
    async with client_for(repo) as client:  # no key: nothing decrypts, no ciphertext leaks either
        source = (await client.get("/catalog/default")).json()["propertySources"][0]["source"]
        document = (await client.get("/catalog-default.properties")).text
    assert source == {"db.user": "app", "invalid.db.password": "<n/a>", "invalid.api.token": "<n/a>"}
    assert "{cipher}" not in document


async def test_encrypt_decrypt_endpoints(write_repo, client_for) -> None:
    async with client_for(write_repo(), encrypt_key=KEY) as client:
        status = await client.get("/encrypt/status")
        encrypted = await client.post("/encrypt", content="pa ss+word", headers={"content-type": "text/plain"})
        decrypted = await client.post("/decrypt", content=encrypted.text, headers={"content-type": "text/plain"})
        # what `curl -d secret` sends: a form body with a trailing '=' (Spring strips it and url-decodes)
        form = await client.post("/encrypt", content="a%2Bb=",
                                 headers={"content-type": "application/x-www-form-urlencoded"})
        bad = await client.post("/decrypt", content="00112233", headers={"content-type": "text/plain"})
    assert status.json() == {"status": "OK"}
    assert encrypted.status_code == 200 and encrypted.headers["content-type"].startswith("text/plain")
    assert decrypted.text == "pa ss+word"
    assert TextEncryptor(KEY).decrypt(form.text) == "a+b"
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"


async def test_encrypt_without_key_is_a_clear_problem(write_repo, client_for) -> None:
    async with client_for(write_repo()) as client:
        for response in (await client.post("/encrypt", content="x"), await client.get("/encrypt/status")):
            assert response.status_code == 404
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["title"] == "No encryption key"


async def test_encrypt_needs_the_admin_token_when_set(write_repo, client_for) -> None:
    async with client_for(write_repo(), encrypt_key=KEY, admin_token="adm") as client:
        denied = await client.post("/encrypt", content="x")
        wrong = await client.post("/decrypt", content="x", headers={"authorization": "Bearer nope"})
        allowed = await client.post("/encrypt", content="x", headers={"authorization": "Bearer adm"})
        served = await client.get("/catalog/default")  # reading config stays open, as in Spring
    assert denied.status_code == wrong.status_code == 401
    assert denied.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 200 and served.status_code == 200


async def test_errors_are_problem_json(write_repo, client_for) -> None:
    repo = write_repo(**{"broken.yml": "a: [unclosed\n"})
    async with client_for(repo) as client:
        broken = await client.get("/broken/default")
        bad_name = await client.get("/.hidden/default")
        no_route = await client.get("/a/b/c/d")
        not_a_doc = await client.get("/catalog.txt")
        bad_query = await client.get("/catalog-dev.yml", params={"resolvePlaceholders": "maybe"})
        health = await client.get("/health")
    assert broken.status_code == 500 and "broken.yml" in broken.json()["detail"]
    for response, status in ((broken, 500), (bad_name, 400), (no_route, 404), (not_a_doc, 404), (bad_query, 400)):
        assert response.status_code == status
        assert response.headers["content-type"] == "application/problem+json"
        assert {"type", "title", "status", "detail"} <= response.json().keys()
    assert health.json() == {"status": "UP"}
