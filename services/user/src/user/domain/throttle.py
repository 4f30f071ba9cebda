"""Login throttling, as plain Python: how long a key (an account, a client address) stays locked after failed
logins. Every attempt is counted *before* its password is checked and given back when it succeeds, so twenty
guesses sent at once are counted as twenty, not checked in parallel against a lock none of them has set yet."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ThrottlePolicy:
    """`free_failures` in a row cost nothing; each one after locks the key twice as long as the one before
    (`base_lock_s`, 2×, 4×, … up to `max_lock_s`). Failures older than `forget_after_s` are forgotten."""

    free_failures: int
    base_lock_s: float
    max_lock_s: float
    forget_after_s: float

    def lock_s(self, failures: int) -> float:
        if failures < self.free_failures:
            return 0.0
        return min(self.max_lock_s, self.base_lock_s * 2 ** (failures - self.free_failures))


@dataclass
class LoginFailures:
    """The failed logins of one key: `account:<username>` or `client:<address>`."""

    key: str
    failures: int = 0
    last_failure_at: float = 0.0
    locked_until: float = 0.0

    @property
    def kind(self) -> str:
        return self.key.partition(":")[0]

    def retry_after_s(self, now: float) -> float:
        return max(0.0, self.locked_until - now)

    def count(self, policy: ThrottlePolicy, now: float) -> None:
        """One more attempt, counted as failed until it is shown otherwise (`give_back`)."""
        if now - self.last_failure_at > policy.forget_after_s:
            self.failures = 0
        self.failures += 1
        self.last_failure_at = now
        lock = policy.lock_s(self.failures)
        self.locked_until = now + lock if lock else 0.0

    def give_back(self, policy: ThrottlePolicy) -> None:
        """The attempt counted in advance succeeded."""
        self.failures = max(0, self.failures - 1)
        if not policy.lock_s(self.failures):
            self.locked_until = 0.0


@dataclass(frozen=True)
class LoginThrottle:
    """The two policies: per account (few free failures: a person mistypes, a guesser does not stop) and per
    client address (many: one address may hold many people, but one guesser trying many accounts is one address)."""

    account: ThrottlePolicy
    client: ThrottlePolicy

    @staticmethod
    def keys(username: str, client: str) -> tuple[str, str]:
        return f"account:{username}", f"client:{client}"

    def policy(self, record: LoginFailures) -> ThrottlePolicy:
        return self.account if record.kind == "account" else self.client


class LoginThrottled(Exception):
    """Too many failed logins for this account or from this client: try again in `retry_after_s`."""

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(1, math.ceil(retry_after_s))
        super().__init__(f"too many failed logins; retry in {self.retry_after_s} s")


class WrongCredentials(Exception):
    """No such user, or the wrong password: deliberately the same thing to the caller."""
