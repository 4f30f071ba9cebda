"""order: places orders and drives the saga: PENDING → CONFIRMED | REJECTED, on the catalog's answer."""
