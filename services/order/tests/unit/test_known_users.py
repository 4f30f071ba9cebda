import asyncio

from order.service_layer.known_users import KnownUsers


class Directory:
    def __init__(self, existing: set[str]) -> None:
        self.existing, self.asked = existing, []

    async def exists(self, user_id: str) -> bool:
        self.asked.append(user_id)
        return user_id in self.existing


def test_a_user_who_exists_is_asked_about_once():
    directory = Directory({"u1"})
    users = KnownUsers(directory)
    assert asyncio.run(users.exists("u1")) and asyncio.run(users.exists("u1"))
    assert directory.asked == ["u1"]


def test_no_such_user_is_never_remembered():
    directory = Directory(set())
    users = KnownUsers(directory)
    assert not asyncio.run(users.exists("u2"))
    directory.existing.add("u2")  # signed up a moment later: may order at once
    assert asyncio.run(users.exists("u2"))
    assert directory.asked == ["u2", "u2"]


def test_the_memory_is_bounded_forgetting_the_least_recently_seen():
    directory = Directory({"a", "b", "c"})
    users = KnownUsers(directory, capacity=2)
    for user in ("a", "b", "a", "c"):  # "b" is the least recently seen when "c" arrives
        asyncio.run(users.exists(user))
    asyncio.run(users.exists("a"))
    asyncio.run(users.exists("b"))
    assert directory.asked == ["a", "b", "c", "b"]
