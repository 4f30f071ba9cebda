"""catalog: products and their stock. Reserves stock for placed orders, all lines or none (saga step)."""
