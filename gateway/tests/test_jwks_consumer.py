"""The gateway as a consumer of the user service's JWKS document (Pact): its real JwksVerifier fetches the keys from
Pact's mock server; what it needs — RSA signature keys with a kid — goes into contracts/pacts/gateway-user.json."""

from __future__ import annotations

from pathlib import Path

import httpx
from pact import Pact, match

from msa_kit.tokens import JwksVerifier
from pacts import ToMockServer, check_or_update

# An example key's public half (any RSA modulus does: the provider's key is its own, only its shape is the contract).
EXAMPLE_N = (
    "zmz3k8cJHpKtBWVsc-vXZMhwjbgkppmcqEJz-lcl11d1At5-pEc3yc7-"
    "rxIZmjC6rKAYnmhyjCxqcuZGwu3Ka712P3UKt7ybrQjfNWfktMhinZKCenXPFRBUyBRP0jTmYtROhjMgfcKqD8HyGJWbB69YfQuc"
    "TMluqL3NaR-t053IANZFRkBStUFAzjKS48BCmjt29ynFVI8t6gAUwRgNbCk-"
    "nKpmIGJdTlaQIqcGaCqQfipjeUrWU0E-hN1riUHnIV1dbgAYNVv5O8AT0tPNvmPJFe-"
    "hD2etpEuHqYpuvzS073dYp6H81HJ_RlPK_B3j-_kd9dH69VaUBGwgLoj_pQ"
)


async def test_the_gateway_reads_rsa_signature_keys_from_the_jwks(tmp_path: Path):
    pact = Pact("gateway", "user").with_specification("V4")
    (pact.upon_receiving("the signing keys")
     .with_request("GET", "/.well-known/jwks.json")
     .will_respond_with(200)
     .with_body({"keys": match.each_like({"kty": "RSA", "use": "sig", "alg": "RS256", "kid": match.str("k-1"),
                                          "n": match.str(EXAMPLE_N), "e": match.str("AQAB")}, min=1)},
                content_type="application/json"))
    with pact.serve() as server:
        async with httpx.AsyncClient(transport=ToMockServer(str(server.url))) as http:
            verifier = JwksVerifier(http, min_refetch_s=0)
            await verifier._refresh()
    assert list(verifier._keys) == ["k-1"]
    pact.write_file(tmp_path, overwrite=True)
    check_or_update(tmp_path, "gateway-user.json")
