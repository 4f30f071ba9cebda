"""msa_probe: the synthetic probe. Every period, one synthetic transaction through the gateway, as a user would make
it (sign up/log in, browse the catalog, place an order tagged `X-Synthetic-Transaction: true`, wait for the saga to
confirm it, cancel it), reported as Prometheus metrics and on GET /probe (probe/README.md)."""
