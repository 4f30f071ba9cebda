"""user: accounts and login. Issues signed JWTs that the gateway verifies with this service's public keys."""
