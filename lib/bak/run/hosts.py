"""One runner per host for the life of a command: connections are opened on first use and reused."""

from __future__ import annotations

import re
from pathlib import Path

from bak.config import LOCAL, Config, Host
from bak.run.base import Runner
from bak.run.local import LocalRunner


FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}=?")


def check_fingerprint(text: str, where: str = "--fingerprint") -> str:
    """An OpenSSH SHA256 fingerprint as `ssh-keygen -lf` prints it, checked before anything connects."""
    from bak.errors import BadInput

    if not FINGERPRINT.fullmatch(text):
        raise BadInput(f"{text[:80]!r} is not an SSH key fingerprint like SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s",
                       where=where, hint="Copy it from the host: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
    return text.rstrip("=")


def known_hosts_path(host: Host) -> Path:
    from bak.paths import state_dir

    return Path(host.known_hosts).expanduser() if host.known_hosts else state_dir() / "known_hosts"


class Hosts:
    def __init__(self, config: Config):
        self.config = config
        self._runners: dict[str, Runner] = {}

    def runner(self, name: str) -> Runner:
        if name not in self._runners:
            if name == LOCAL:
                self._runners[name] = LocalRunner()
            else:
                from bak.run.ssh import SSHRunner

                host = self.config.host(name)
                self._runners[name] = SSHRunner(host, known_hosts_path(host))
        return self._runners[name]

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners.clear()

    def __enter__(self) -> "Hosts":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
