"""msa: run the sandbox's topology locally (supervisord) and look at it. See runner.Topology and spec.default_spec."""

from .runner import (
    AlreadyRunning,
    BrokerUnreachable,
    NotRunning,
    PortsInUse,
    ProgramStatus,
    StartupTimeout,
    Topology,
    TopologyError,
)
from .spec import Ports, Program, TopologySpec, default_spec, free_ports

__all__ = [
    "AlreadyRunning",
    "BrokerUnreachable",
    "NotRunning",
    "Ports",
    "PortsInUse",
    "Program",
    "ProgramStatus",
    "StartupTimeout",
    "Topology",
    "TopologyError",
    "TopologySpec",
    "default_spec",
    "free_ports",
]
