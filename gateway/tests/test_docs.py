from msa_gateway.docs import DocsSection, aggregate
from msa_gateway.routes import RouteSpec, RouteTable

TABLE = RouteTable([
    RouteSpec(id="sign-up", path="/api/users", exact=True, methods=["POST"], service="user", auth="public"),
    RouteSpec(id="users", path="/api/users", service="user"),
    RouteSpec(id="admin-users", path="/api/admin/users", methods=["GET"], service="user", strip_prefix=3,
              prefix="/internal/users", roles=["admin"]),
    RouteSpec(id="catalog", path="/api/catalog", service="catalog", strip_prefix=2, auth="public",
              rate_limit={"requests": 5}),
])

USER = {"openapi": "3.1.0", "paths": {
    "/users": {"post": {"operationId": "sign_up", "requestBody": {"content": {"application/json": {"schema": {
        "$ref": "#/components/schemas/SignUp"}}}}, "responses": {"201": {"description": "ok"}}}},
    "/users/me": {"get": {"operationId": "me", "parameters": [{"in": "header", "name": "x-user-id"}],
                          "responses": {"200": {"description": "ok"}}}},
    "/internal/users/{user_id}": {"get": {"operationId": "get_user", "tags": ["internal"], "responses": {}}},
    "/health": {"get": {"tags": ["operations"], "responses": {}}},
    "/.well-known/jwks.json": {"get": {"tags": ["auth"], "responses": {}}},
}, "components": {"schemas": {"SignUp": {"type": "object"}, "HTTPValidationError": {"type": "object"}}}}
CATALOG = {"openapi": "3.1.0", "paths": {"/products/{sku}": {"get": {"operationId": "product", "responses": {}}}},
           "components": {"schemas": {"HTTPValidationError": {"type": "object", "title": "catalog's"}}}}


def test_paths_move_under_their_public_prefix_and_only_routed_ones_appear():
    doc = aggregate(TABLE, {"user": USER, "catalog": CATALOG}, DocsSection())
    assert set(doc["paths"]) == {"/api/users", "/api/users/me", "/api/admin/users/{user_id}",
                                 "/api/catalog/products/{sku}"}  # no /health, no unrouted jwks


def test_auth_is_described_and_gateway_errors_documented():
    doc = aggregate(TABLE, {"user": USER, "catalog": CATALOG}, DocsSection())
    assert doc["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    me = doc["paths"]["/api/users/me"]["get"]
    assert me["security"] == [{"bearerAuth": []}] and "401" in me["responses"] and "parameters" not in me
    assert "security" not in doc["paths"]["/api/users"]["post"] and "413" in doc["paths"]["/api/users"]["post"]["responses"]
    assert "403" in doc["paths"]["/api/admin/users/{user_id}"]["get"]["responses"]
    assert "429" in doc["paths"]["/api/catalog/products/{sku}"]["get"]["responses"]
    assert doc["paths"]["/api/catalog/products/{sku}"]["get"]["responses"]["503"]["content"][
        "application/problem+json"]["schema"] == {"$ref": "#/components/schemas/Problem"}


def test_component_names_are_prefixed_per_service():
    doc = aggregate(TABLE, {"user": USER, "catalog": CATALOG}, DocsSection())
    schemas = doc["components"]["schemas"]
    assert {"User_SignUp", "User_HTTPValidationError", "Catalog_HTTPValidationError", "Problem"} <= schemas.keys()
    body = doc["paths"]["/api/users"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/User_SignUp"}


def test_an_unavailable_service_is_named_not_fatal():
    doc = aggregate(TABLE, {"user": USER}, DocsSection(), {"catalog": "no passing instance"})
    assert doc["info"]["x-unavailable"] == {"catalog": "no passing instance"}
    assert "/api/users/me" in doc["paths"]
