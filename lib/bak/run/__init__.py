"""How bak starts processes: the only package that does.

A Runner runs an argv list on one host (this machine, or an SSH host) and streams its
stdout into a sink. `Hosts` hands out one runner per host and closes them at the end,
so a command reuses one SSH connection per host for all its work.
"""

from bak.run.base import Completed, Runner
from bak.run.hosts import Hosts

__all__ = ["Completed", "Runner", "Hosts"]
