"""Password guessing through the gateway, as a guesser would: failed logins lock the account with growing
back-offs (429 + Retry-After, problem+json), the right password waits out the lock too, an admin sees and clears
locks (`msa locks`), and an unknown username is answered exactly like a wrong password."""

from __future__ import annotations

import time
import uuid
from typing import Iterator

import httpx
import pytest

from support import ADMIN_TOKEN, Stack, msa

pytestmark = pytest.mark.integration

PASSWORD = "s3cret-Passw0rd"


@pytest.fixture
def gateway(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway, timeout=10) as http:
        yield http
    # This address (127.0.0.1) has its failures counted too: leave none behind for the tests that log in next.
    r = httpx.delete(stack.topology.url("user-1") + "/admin/login-locks",
                     headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
    assert r.status_code == 200, r.text


def sign_up(http: httpx.Client) -> str:
    username = f"t{uuid.uuid4().hex[:10]}"
    assert http.post("/api/users", json={"username": username, "password": PASSWORD}).status_code == 201
    return username


def log_in(http: httpx.Client, username: str, password: str) -> httpx.Response:
    return http.post("/api/auth/token", data={"username": username, "password": password})


def assert_throttled(r: httpx.Response) -> int:
    assert r.status_code == 429, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["title"] == "Too many failed logins" and "retry in" in body["detail"]
    retry_after = int(r.headers["retry-after"])
    assert retry_after >= 1 and body["retry_after_s"] == retry_after
    return retry_after


def test_twenty_wrong_passwords_lock_the_account_until_the_lock_expires(gateway: httpx.Client):
    username = sign_up(gateway)
    answers = [log_in(gateway, username, f"wrong-{i}") for i in range(20)]
    assert [r.status_code for r in answers[:5]] == [401] * 5  # five free failures: a person mistypes
    for r in answers[5:]:
        assert_throttled(r)
    retry_after = assert_throttled(log_in(gateway, username, PASSWORD))  # the right password is no key while locked
    time.sleep(retry_after + 0.2)
    ok = log_in(gateway, username, PASSWORD)
    assert ok.status_code == 200 and ok.json()["access_token"]
    # A success forgives the account: the next mistake is a plain 401 again, not a lock.
    assert log_in(gateway, username, "wrong-again").status_code == 401


def test_an_admin_sees_the_lock_and_clears_it_with_msa_locks(stack: Stack, gateway: httpx.Client):
    username = sign_up(gateway)
    for i in range(5):
        log_in(gateway, username, f"wrong-{i}")
    for _ in range(2):  # wait out the 1 s lock, then the 2 s one: the third lasts 4 s, long enough to look at
        time.sleep(assert_throttled(log_in(gateway, username, "wrong")) + 0.1)
        assert log_in(gateway, username, "wrong").status_code == 401
    shown = msa(stack, "locks")
    assert username in shown and "yes," in shown  # the account's row, locked
    assert_throttled(log_in(gateway, username, PASSWORD))
    assert f"account {username}" in msa(stack, "locks", "clear", "--account", username)
    assert log_in(gateway, username, PASSWORD).status_code == 200
    assert username not in msa(stack, "locks")
    assert "Give one of" in msa(stack, "locks", "clear", ok=False)


def test_the_admin_endpoint_needs_the_admin_token(stack: Stack):
    r = httpx.get(stack.topology.url("user-1") + "/admin/login-locks", timeout=5)
    assert r.status_code == 401 and r.headers["content-type"] == "application/problem+json"


def test_no_such_user_and_wrong_password_get_the_same_answer_in_the_same_time(gateway: httpx.Client):
    username = sign_up(gateway)
    nobody = f"nobody-{uuid.uuid4().hex[:8]}"
    timings: dict[str, list[float]] = {username: [], nobody: []}
    answers: dict[str, list[httpx.Response]] = {username: [], nobody: []}
    for i in range(4):  # within the five free failures of each
        for who in (username, nobody):
            t = time.perf_counter()
            answers[who].append(log_in(gateway, who, f"wrong-{i}"))
            timings[who].append(time.perf_counter() - t)
    for a, b in zip(answers[username], answers[nobody]):
        assert a.status_code == b.status_code == 401
        assert a.content == b.content and a.headers["content-type"] == b.headers["content-type"]
        assert a.headers["www-authenticate"] == b.headers["www-authenticate"] == "Bearer"
    # The fastest of each: the work a login does, without what other processes on the cores added (a check skipped
    # for unknown users would make one side ~0.1 s faster every time, so ~10× apart).
    ratio = min(timings[username]) / min(timings[nobody])
    assert 0.6 < ratio < 1.6, timings  # both pay one scrypt check (~0.1 s); a username probe sees no difference
    for who in (username, nobody):  # and both lock alike
        log_in(gateway, who, "wrong-4")
        assert_throttled(log_in(gateway, who, "wrong-5"))
