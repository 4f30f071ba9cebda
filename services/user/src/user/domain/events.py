"""What the user service tells the world (over the broker, through the outbox).

Each event is a dataclass with a dotted `type` and a payload `version`: contracts/events/<type>.v<version>.schema.json
is generated from it (`make contracts`), and a change to a field is a change to that contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class UserRegistered:
    type: ClassVar[str] = "user.registered"
    version: ClassVar[int] = 1  # of its payload: contracts/events/<type>.v<version>.schema.json (`make contracts`)
    user_id: str
    username: str
