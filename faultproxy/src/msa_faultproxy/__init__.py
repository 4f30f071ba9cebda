"""A TCP fault proxy on the Toxiproxy model: sits between a service and its broker (or database), passes bytes
through, and on request breaks the link — down, latency, bandwidth, timeout, reset — controlled over HTTP."""

from .client import FaultProxyClient, FaultProxyError
from .proxy import Proxies, Proxy, ProxyError

__all__ = ["FaultProxyClient", "FaultProxyError", "Proxies", "Proxy", "ProxyError"]
