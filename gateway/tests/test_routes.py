import pytest
from pydantic import ValidationError

from msa_gateway.routes import Route, RouteSpec, RouteTable


def route(**spec) -> Route:
    return Route(RouteSpec.model_validate({"id": "r", "service": "svc", **spec}))


def test_a_prefix_matches_on_segment_boundaries_only():
    r = route(path="/api/orders")
    assert r.matches("GET", "/api/orders") and r.matches("GET", "/api/orders/1") and r.matches("GET", "/api/orders/")
    assert not r.matches("GET", "/api/ordersX") and not r.matches("GET", "/api")


def test_exact_methods_and_header_predicates():
    r = route(path="/api/users", exact=True, methods=["post"], headers={"X-Canary": "yes", "X-Any": "*"})
    ok = [(b"x-canary", b"yes"), (b"x-any", b"whatever")]
    assert r.matches("POST", "/api/users", ok)
    assert not r.matches("GET", "/api/users", ok)
    assert not r.matches("POST", "/api/users/1", ok)
    assert not r.matches("POST", "/api/users", [(b"x-canary", b"no"), (b"x-any", b"1")])
    assert not r.matches("POST", "/api/users", [(b"x-canary", b"yes")])


def test_a_pattern_matches_one_segment_per_parameter():
    r = route(path="/api/orders/{id}/cancel", exact=True)
    assert r.matches("POST", "/api/orders/42/cancel")
    assert not r.matches("POST", "/api/orders/42/x/cancel") and not r.matches("POST", "/api/orders//cancel")
    assert not r.matches("POST", "/api/orders/42/cancel/more")


def test_strip_prefix_and_prefix_rewrite_the_upstream_path():
    assert route(path="/api/catalog", strip_prefix=2).upstream_path("/api/catalog/products/X") == "/products/X"
    assert route(path="/api/catalog", strip_prefix=2).upstream_path("/api/catalog") == "/"
    assert route(path="/api/users", strip_prefix=1).upstream_path("/api/users/me") == "/users/me"
    assert route(path="/api", strip_prefix=0).upstream_path("/api/x") == "/api/x"
    admin = route(path="/api/admin/users", strip_prefix=3, prefix="/internal/users")
    assert admin.upstream_path("/api/admin/users/7") == "/internal/users/7"
    assert admin.public_path("/internal/users/{user_id}") == "/api/admin/users/{user_id}"
    assert admin.public_path("/users/me") is None


def test_first_matching_route_wins():
    table = RouteTable([RouteSpec(id="sign-up", path="/api/users", exact=True, methods=["POST"], service="user",
                                  auth="public"),
                        RouteSpec(id="users", path="/api/users", service="user")])
    assert table.match("POST", "/api/users").id == "sign-up"
    assert table.match("GET", "/api/users").id == "users"
    assert table.match("GET", "/nope") is None


@pytest.mark.parametrize("bad", [
    {"strip_prefx": 1},  # a typo is refused, not ignored
    {"url": "http://127.0.0.1:1"},  # two targets
    {"path": "api/x"},
    {"auth": "sometimes"},
    {"rate_limit": {"requests": 0}},
])
def test_invalid_routes_are_refused(bad):
    with pytest.raises(ValidationError):
        RouteSpec.model_validate({"id": "r", "path": "/x", "service": "svc", **bad})


def test_roles_imply_auth_and_a_rate_limit_compiles_to_a_bucket():
    r = route(path="/x", auth="public", roles=["admin"], rate_limit={"requests": 10, "per_s": 2, "burst": 30})
    assert r.auth and r.roles == {"admin"}
    assert r.limit.capacity == 30 and r.limit.rate == 5
