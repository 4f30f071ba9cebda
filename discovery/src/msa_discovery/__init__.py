"""msa-discovery: a single-node service registry that speaks (a subset of) the Consul HTTP API."""

from .api import create_app
from .registry import Registry

__all__ = ["create_app", "Registry"]
