"""The API gateway: the single public entry point. Routes from the config server, JWT verification, client-side
load balancing and breakers through the kit's client, problem+json errors, the trace id on every response."""
