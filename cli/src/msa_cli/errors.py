"""What can go wrong with a topology, local (runner.Topology) or compose (compose.ComposeTopology), as exceptions a
command catches by kind: TopologyError and its kinds."""

from __future__ import annotations

__all__ = ["AlreadyRunning", "BrokerUnreachable", "NotRunning", "PortsInUse", "StartupTimeout", "TopologyError"]


class TopologyError(RuntimeError):
    """An expected failure; str(error) is a message for a person, printed without a traceback."""


class BrokerUnreachable(TopologyError):
    pass


class PortsInUse(TopologyError):
    def __init__(self, message: str, ports: list[int]):
        super().__init__(message)
        self.ports = ports


class AlreadyRunning(TopologyError):
    pass


class NotRunning(TopologyError):
    pass


class StartupTimeout(TopologyError):
    def __init__(self, message: str, missing: list[str]):
        super().__init__(message)
        self.missing = missing
