import pytest

from user.domain.events import UserRegistered
from user.domain.model import InvalidSignUp, User


def test_sign_up_hashes_the_password_and_records_the_event():
    user = User.sign_up("alice", "correct horse")
    assert "correct horse" not in user.password_hash
    assert user.check_password("correct horse") and not user.check_password("wrong horse")
    assert isinstance(user.events[0], UserRegistered)


@pytest.mark.parametrize("username,password,field", [("al", "longenough", "username"),
                                                     ("alice!", "longenough", "username"),
                                                     ("alice", "short", "password")])
def test_bad_sign_up_names_the_field(username, password, field):
    with pytest.raises(InvalidSignUp) as err:
        User.sign_up(username, password)
    assert err.value.field == field
