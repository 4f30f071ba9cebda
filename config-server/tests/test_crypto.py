from __future__ import annotations

import base64

import pytest

from msa_config_server.crypto import DecryptionError, TextEncryptor, decrypt_source


@pytest.fixture(scope="module")
def encryptor() -> TextEncryptor:
    return TextEncryptor("correct horse battery staple")


def test_round_trip_and_fresh_nonce(encryptor: TextEncryptor) -> None:
    a, b = encryptor.encrypt("s3cret ü"), encryptor.encrypt("s3cret ü")
    assert a != b and all(c in "0123456789abcdef" for c in a)
    assert encryptor.decrypt(a) == encryptor.decrypt("{cipher}" + b) == "s3cret ü"


def test_base64_ciphertext_accepted(encryptor: TextEncryptor) -> None:
    b64 = base64.b64encode(bytes.fromhex(encryptor.encrypt("x"))).decode().rstrip("=")
    assert encryptor.decrypt(b64) == "x"


def test_wrong_key_is_detected(encryptor: TextEncryptor) -> None:
    with pytest.raises(DecryptionError):
        TextEncryptor("another key").decrypt(encryptor.encrypt("s3cret"))


def test_decrypt_source_replaces_and_reports_invalid(encryptor: TextEncryptor) -> None:
    source = {"user": "db", "password": "{cipher}" + encryptor.encrypt("pw"), "token": "{cipher}not-a-cipher"}
    assert decrypt_source(source, encryptor) == {"user": "db", "password": "pw", "invalid.token": "<n/a>"}


def test_no_key_makes_every_cipher_invalid(encryptor: TextEncryptor) -> None:
    source = {"password": "{cipher}" + encryptor.encrypt("pw"), "plain": "ok"}
    assert decrypt_source(source, None) == {"plain": "ok", "invalid.password": "<n/a>"}


def test_key_never_in_repr(encryptor: TextEncryptor) -> None:
    assert "horse" not in repr(encryptor)
