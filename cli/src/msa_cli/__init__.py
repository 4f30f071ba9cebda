"""msa: run the sandbox's topology locally (supervisord) and look at it. See runner.Topology and spec.default_spec."""

from .errors import AlreadyRunning, BrokerUnreachable, NotRunning, PortsInUse, StartupTimeout, TopologyError
from .http_checks import ProgramStatus
from .runner import Topology
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
