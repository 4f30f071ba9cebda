"""Token forgery against the verifier: every way to fake a token that the gateway must refuse."""

import base64
import hashlib
import hmac
import json
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from harness import Keys

from msa_kit.tokens import ISSUER, InvalidToken, JwksVerifier


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict, claims: dict, signature: bytes = b"") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def fetches() -> list[int]:
    return []


@pytest.fixture
def verifier(keys: Keys, fetches: list[int]) -> JwksVerifier:
    def jwks(request: httpx.Request) -> httpx.Response:
        fetches.append(1)
        return httpx.Response(200, json={"keys": [keys.jwk]})

    return JwksVerifier(httpx.AsyncClient(transport=httpx.MockTransport(jwks)), min_refetch_s=60)


def claims(**over) -> dict:
    now = int(time.time())
    return {"sub": "u-1", "name": "ada", "roles": ["user"], "iss": ISSUER, "iat": now, "exp": now + 300, **over}


async def test_a_genuine_token_verifies_and_is_cached(verifier, keys, fetches):
    token = keys.token()
    assert (await verifier.verify(token))["sub"] == "u-1"
    assert (await verifier.verify(token))["sub"] == "u-1"
    assert len(fetches) == 1


async def test_signed_with_another_key_under_the_right_kid(verifier):
    forger = Keys(kid="k1")  # same kid, different private key
    with pytest.raises(InvalidToken, match="[Ss]ignature"):
        await verifier.verify(forger.token())


async def test_expired(verifier, keys):
    with pytest.raises(InvalidToken, match="expired"):
        await verifier.verify(keys.token(ttl=-60))


async def test_alg_none(verifier, keys):
    with pytest.raises(InvalidToken, match="algorithm 'none' not accepted"):
        await verifier.verify(unsigned({"alg": "none", "typ": "JWT", "kid": "k1"}, claims()))


async def test_hs256_signed_with_the_public_key(verifier, keys):
    # The classic confusion: HMAC "secret" = the RSA public key everyone can download from the JWKS.
    public_pem = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(keys.jwk)).public_bytes(
        Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    head_body = unsigned(header, claims()).rsplit(".", 1)[0]
    sig = hmac.new(public_pem, head_body.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken, match="algorithm 'HS256' not accepted"):
        await verifier.verify(f"{head_body}.{b64(sig)}")


@pytest.mark.parametrize("garbage", ["", "abc", "a.b.c", "Bearer", "x" * 10_000, "eyJhbGciOiJSUzI1NiJ9..", "..."])
async def test_garbage(verifier, garbage):
    with pytest.raises(InvalidToken):
        await verifier.verify(garbage)


async def test_wrong_issuer_and_missing_claims(verifier, keys):
    with pytest.raises(InvalidToken, match="issuer"):
        await verifier.verify(keys.token(iss="someone-else"))
    no_exp = jwt.encode({k: v for k, v in claims().items() if k != "exp"}, keys.private, algorithm="RS256",
                        headers={"kid": "k1"})
    with pytest.raises(InvalidToken, match="exp"):
        await verifier.verify(no_exp)


async def test_an_unknown_kid_refetches_once_then_is_throttled(verifier, keys, fetches):
    await verifier.verify(keys.token())
    verifier._fetched_at -= 61  # a minute later
    stranger = Keys(kid="k-unknown")
    for _ in range(5):
        with pytest.raises(InvalidToken, match="unknown key"):
            await verifier.verify(stranger.token())
    assert len(fetches) == 2  # the first kid miss refetched; the rest were within min_refetch_s


async def test_a_rotated_key_is_picked_up_on_kid_miss(keys):
    current = {"keys": [keys.jwk]}
    verifier = JwksVerifier(httpx.AsyncClient(transport=httpx.MockTransport(
        lambda r: httpx.Response(200, json=current))), min_refetch_s=0)
    await verifier.verify(keys.token())
    rotated = Keys(kid="k2")
    current["keys"] = [rotated.jwk]
    assert (await verifier.verify(rotated.token()))["sub"] == "u-1"
