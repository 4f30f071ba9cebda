"""Login throttling, below HTTP: the policy's back-off, and the use case's counting with an in-memory unit of work
(the black-box tests in tests/test_login_throttle.py do the same through the gateway, on the real database)."""

from __future__ import annotations

import asyncio

import pytest

from msa_kit.uow import UnitOfWork
from user.domain.model import User
from user.domain.throttle import LoginFailures, LoginThrottle, LoginThrottled, ThrottlePolicy, WrongCredentials
from user.service_layer import handlers

POLICY = ThrottlePolicy(free_failures=3, base_lock_s=1.0, max_lock_s=8.0, forget_after_s=60.0)
THROTTLE = LoginThrottle(account=POLICY, client=ThrottlePolicy(10, 1.0, 8.0, 60.0))


def test_the_lock_doubles_after_the_free_failures_up_to_the_cap():
    assert [POLICY.lock_s(n) for n in range(1, 9)] == [0, 0, 1, 2, 4, 8, 8, 8]


def test_failures_are_forgotten_after_a_quiet_spell():
    record = LoginFailures("account:alice")
    for t in (0.0, 1.0, 2.0):
        record.count(POLICY, t)
    assert record.failures == 3 and record.retry_after_s(2.0) == 1.0
    record.count(POLICY, 100.0)
    assert record.failures == 1 and record.retry_after_s(100.0) == 0


class Store:
    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.failures: dict[str, LoginFailures] = {}


class FakeUow(UnitOfWork):
    """Commits copy the transaction's records back into the store; an uncommitted unit of work changes nothing."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self.store, self.staged = store, {}
        self.users = self
        self.login_failures = self

    async def by_username(self, username: str) -> User | None:
        return next((u for u in self.store.users.values() if u.username == username), None)

    async def get_many(self, keys: list[str]) -> list[LoginFailures]:
        return [LoginFailures(**vars(self.store.failures[k])) if k in self.store.failures else LoginFailures(k)
                for k in keys]

    async def save(self, records: list[LoginFailures]) -> None:
        self.staged.update({r.key: r for r in records})

    async def commit(self) -> None:
        for key, record in self.staged.items():
            if record.failures:
                self.store.failures[key] = record
            else:
                self.store.failures.pop(key, None)

    async def rollback(self) -> None:
        self.staged = {}

    async def processed(self, event_ids: list[str]) -> set[str]:
        return set()

    async def mark_processed(self, events: list[tuple[str, str]]) -> None:
        return None


@pytest.fixture
def store() -> Store:
    s = Store()
    alice = User.sign_up("alice", "correct horse")
    s.users[alice.id] = alice
    return s


def log_in(store: Store, username: str, password: str, now: float, client: str = "10.0.0.1"):
    return asyncio.run(handlers.log_in(lambda **_: FakeUow(store), THROTTLE, username, password, client,
                                       now=lambda: now))


def test_the_account_locks_after_its_free_failures_and_the_right_password_waits_too(store: Store):
    for _ in range(3):
        with pytest.raises(WrongCredentials):
            log_in(store, "alice", "wrong", now=0.0)
    with pytest.raises(LoginThrottled) as locked:
        log_in(store, "alice", "correct horse", now=0.5)
    assert locked.value.retry_after_s == 1
    assert log_in(store, "alice", "correct horse", now=1.5).username == "alice"
    assert "account:alice" not in store.failures  # a success forgives the account
    assert store.failures["client:10.0.0.1"].failures == 3  # the client gets only its own attempt back


def test_an_unknown_user_is_counted_and_answered_as_a_wrong_password(store: Store):
    for _ in range(3):
        with pytest.raises(WrongCredentials):
            log_in(store, "mallory", "whatever", now=0.0)
    with pytest.raises(LoginThrottled):
        log_in(store, "mallory", "whatever", now=0.1)


def test_a_client_guessing_many_accounts_is_locked_by_its_address(store: Store):
    for i in range(10):
        with pytest.raises(WrongCredentials):
            log_in(store, f"user{i}", "guess", now=float(i) / 100)
    with pytest.raises(LoginThrottled):
        log_in(store, "alice", "correct horse", now=0.2)
    assert log_in(store, "alice", "correct horse", now=0.2, client="10.0.0.2").username == "alice"
