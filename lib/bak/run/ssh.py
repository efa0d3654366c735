"""Runs processes on an SSH host through one paramiko connection, host keys checked.

paramiko is imported here only, and this module only when a command needs a remote
host, so `bak --help` stays fast.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import logging

import paramiko

from bak.config import Host
from bak.errors import CommandFailed, HostKeyMismatch, HostKeyUnknown, Refused, ToolMissing, TransportError
from bak.paths import regular_or_absent
from bak.run.base import CHUNK, Completed, Feeder, Held, Runner, Sink, StderrTail, ere_escape
from bak.run.hosts import check_fingerprint

# paramiko logs its own errors (and tracebacks of its transport thread) to stderr when nothing else does:
# bak turns every failure into its own error, so that chatter never reaches the user.
_paramiko_log = logging.getLogger("paramiko")
_paramiko_log.addHandler(logging.NullHandler())
_paramiko_log.propagate = False

# What a remote shell reports for a command it cannot find.
_NOT_FOUND = 127


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint, so it can be compared with `ssh-keygen -lf`."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_entry(host: Host) -> str:
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


class _RefuseUnknownKey(paramiko.MissingHostKeyPolicy):
    def __init__(self, host: Host, known_hosts: Path):
        self.host = host
        self.known_hosts = known_hosts

    def missing_host_key(self, client, hostname, key):
        raise HostKeyUnknown(
            f"host key of {self.host.name} ({known_hosts_entry(self.host)}) is not in {self.known_hosts}: "
            f"{key.get_name()} {fingerprint(key)}",
            where=f"hosts.{self.host.name}",
            hint=f"Check the fingerprint on the host (ssh-keygen -lf /etc/ssh/ssh_host_{key.get_name().split('-')[-1]}_key.pub), "
                 f"then run: bak ssh trust {self.host.name} --fingerprint {fingerprint(key)}",
            details={"fingerprint": fingerprint(key), "key_type": key.get_name()})


class SSHRunner(Runner):
    """One connection per host; every run opens a channel on it."""

    connections_opened = 0  # counted across the process, so tests can check one connection per host

    def __init__(self, host: Host, known_hosts: Path):
        self.host = host
        self.host_name = host.name
        self.known_hosts = known_hosts
        self._client: paramiko.SSHClient | None = None
        # One SFTP session per thread on the one connection: paramiko's SFTPClient mixes up replies
        # when threads share it (parallel verify hung, or read "Garbage packet received").
        self._sftp_of_thread = threading.local()
        self._sftp_sessions: list[paramiko.SFTPClient] = []
        self._lock = threading.Lock()

    # -- connection ---------------------------------------------------------------------
    def client(self) -> paramiko.SSHClient:
        with self._lock:
            if self._client is None or not self._client.get_transport() or not self._client.get_transport().is_active():
                self._client = self._connect()
            return self._client

    def _connect(self) -> paramiko.SSHClient:
        host = self.host
        client = paramiko.SSHClient()
        if regular_or_absent(self.known_hosts, f"hosts.{host.name}.known_hosts"):
            client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(_RefuseUnknownKey(host, self.known_hosts))
        key_file = str(Path(host.key_file).expanduser()) if host.key_file else None
        if key_file and not regular_or_absent(Path(key_file), f"hosts.{host.name}.key_file"):
            from bak.errors import BadInput

            raise BadInput(f"the SSH key {key_file} of host {host.name} does not exist", where=f"hosts.{host.name}.key_file",
                           hint="Check hosts.NAME.key_file (a private key file, e.g. ~/.ssh/id_ed25519).")
        try:
            client.connect(host.address, port=host.port, username=host.user, key_filename=key_file,
                           timeout=host.connect_timeout, banner_timeout=host.connect_timeout,
                           auth_timeout=host.connect_timeout, allow_agent=key_file is None,
                           look_for_keys=key_file is None)
        except paramiko.BadHostKeyException as exc:
            raise HostKeyMismatch(
                f"HOST KEY CHANGED for {host.name} ({known_hosts_entry(host)}): expected {fingerprint(exc.expected_key)}, "
                f"got {fingerprint(exc.key)}. Someone may be intercepting the connection, or the host was reinstalled.",
                where=f"hosts.{host.name}",
                hint=f"If the host was reinstalled, verify the new key there, then: bak ssh trust {host.name} --replace "
                     f"--fingerprint {fingerprint(exc.key)}") from None
        except paramiko.AuthenticationException as exc:
            raise Refused(f"SSH authentication to {host.user}@{host.name} failed: {exc}", where=f"hosts.{host.name}",
                          code="ssh_auth", hint="Check key_file and that its public key is in the host's authorized_keys.") from None
        except (socket.timeout, TimeoutError) as exc:
            raise TransportError(f"connecting to {host.name} ({host.address}:{host.port}) timed out", where=f"hosts.{host.name}",
                                 hint="Is the host up and the port right? Raise connect_timeout for slow links.") from exc
        except paramiko.ssh_exception.NoValidConnectionsError:
            raise TransportError(f"cannot connect to {host.name} ({host.address}:{host.port}): connection refused",
                                 where=f"hosts.{host.name}", hint="Is sshd running there, on that port?") from None
        except (OSError, EOFError, paramiko.SSHException) as exc:
            if isinstance(exc, HostKeyUnknown):
                raise
            reason = "the host closed the connection before speaking SSH" if "banner" in str(exc) or isinstance(
                exc, EOFError) else str(exc)
            raise TransportError(f"cannot connect to {host.name} ({host.address}:{host.port}): {reason}",
                                 where=f"hosts.{host.name}", hint="Check the address, port and that sshd runs.") from None
        transport = client.get_transport()
        # Without it, Nagle's algorithm and the peer's delayed ACK add ~40 ms to every channel opened.
        transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if host.keepalive:
            transport.set_keepalive(host.keepalive)
        SSHRunner.connections_opened += 1
        return client

    def sftp(self) -> paramiko.SFTPClient:
        """This thread's SFTP session (opened on first use, reused after)."""
        client = self.client()
        session = getattr(self._sftp_of_thread, "session", None)
        if session is None or session.sock.closed:
            session = client.open_sftp()
            self._sftp_of_thread.session = session
            with self._lock:
                self._sftp_sessions.append(session)
        return session

    def open_remote_file(self, path: str) -> "ChannelFile":
        """A remote file read on its own SFTP channel (prefetched), so parallel reads never share one session."""
        sftp = self.open_sftp_channel()
        try:
            handle = sftp.open(path, "rb")
        except BaseException:
            sftp.close()
            raise
        handle.prefetch()
        return ChannelFile(handle, sftp)

    def open_sftp_channel(self) -> paramiko.SFTPClient:
        """A private SFTP session on the same connection, for a pipelined upload: paramiko mixes up
        the acks of pipelined writes with other requests sharing one SFTP session."""
        return self.client().open_sftp()

    def close(self) -> None:
        with self._lock:
            for session in self._sftp_sessions:
                session.close()
            self._sftp_sessions.clear()
            self._sftp_of_thread = threading.local()
            if self._client is not None:
                self._client.close()
            self._client = None

    # -- processes ----------------------------------------------------------------------
    def command_line(self, argv: list[str], env: dict[str, str] | None = None) -> str:
        prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
        return shlex.join([*prefix, *argv])

    def describe(self, argv: list[str]) -> str:
        return f"ssh {self.host.name}: {shlex.join(argv)}"

    def run(self, argv: list[str], *, stdin: bytes | BinaryIO | None = None, stdout: Sink | None = None,
            env: dict[str, str] | None = None, timeout: float | None = None, check: bool = True,
            on_stderr_line: Callable[[str], None] | None = None, merge_stderr: bool = False) -> Completed:
        transport = self.client().get_transport()
        try:
            channel = transport.open_session(timeout=self.host.connect_timeout)
            channel.set_combine_stderr(merge_stderr)
            # Bytes, so a file name that is not UTF-8 (read back with surrogateescape) reaches the host as it was.
            channel.exec_command(self.command_line(argv, env).encode("utf-8", "surrogateescape"))
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"lost the connection to {self.host.name}: {exc}", where=self.host.name) from None
        tail = StderrTail(on_stderr_line)
        stderr_thread = threading.Thread(target=self._drain_stderr, args=(channel, tail), daemon=True)
        if not merge_stderr:
            stderr_thread.start()
        feeder = None
        if stdin is not None:
            feeder = Feeder(stdin, channel.sendall, channel.shutdown_write)
            feeder.start()
        else:
            channel.shutdown_write()
        collected: list[bytes] = []
        sink = stdout or collected.append
        deadline = time.monotonic() + timeout if timeout else None
        channel.settimeout(1.0)
        try:
            while True:
                try:
                    chunk = channel.recv(CHUNK)
                except socket.timeout:
                    if deadline and time.monotonic() > deadline:
                        channel.close()
                        raise CommandFailed(f"{argv[0]} on {self.host.name} timed out after {timeout:.0f}s",
                                            where=self.host.name, code="timeout") from None
                    if not transport.is_active():
                        break
                    continue
                if not chunk:
                    break
                sink(chunk)
            if not merge_stderr:
                stderr_thread.join()
            if feeder:
                feeder.join()
                feeder.raise_failure()
            returncode = channel.recv_exit_status() if transport.is_active() or channel.exit_status_ready() else -1
        finally:
            channel.close()
        if returncode == -1 or not channel.exit_status_ready():
            raise TransportError(f"the connection to {self.host.name} dropped while {argv[0]} was running",
                                 where=self.host.name, hint="Check the host and the network, then run again.")
        completed = Completed(list(argv), returncode, b"".join(collected), tail.value())
        if returncode == _NOT_FOUND and b"not found" in completed.stderr:
            raise ToolMissing(f"{argv[0]} is not installed on {self.host.name}", where=self.host.name,
                              hint=f"Install {argv[0]} on {self.host.name}.")
        return self._check(completed, check)

    @staticmethod
    def _drain_stderr(channel, tail: StderrTail) -> None:
        while True:
            try:
                data = channel.recv_stderr(CHUNK)
            except socket.timeout:
                if channel.closed or channel.exit_status_ready() and not channel.recv_stderr_ready():
                    break
                continue
            except (OSError, EOFError):
                break
            if not data:
                break
            tail.feed(data)

    def has_tool(self, tool: str) -> bool:
        return self.run(["sh", "-c", 'command -v "$1"', "sh", tool], check=False).returncode == 0

    def processes_using(self, path: str) -> list[tuple[int, str]]:
        out = self.run(["pgrep", "-a", "-f", "--", ere_escape(path)], check=False)
        found = []
        for line in out.stdout_text.splitlines():
            pid, _, command = line.partition(" ")
            if pid.isdigit() and "pgrep" not in command:  # the login shell that runs pgrep names the path too
                found.append((int(pid), command))
        return found

    @contextmanager
    def secret_file(self, content: bytes) -> Iterator[str]:
        with self._guarded(content) as path:
            yield path

    @contextmanager
    def _held(self, argv: list[str], first_input: bytes) -> Iterator[Held]:
        transport = self.client().get_transport()
        try:
            channel = transport.open_session(timeout=self.host.connect_timeout)
            channel.exec_command(shlex.join(argv))
            channel.sendall(first_input)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise TransportError(f"lost the connection to {self.host.name}: {exc}", where=self.host.name) from None
        held = Held("")
        try:
            channel.settimeout(self.host.connect_timeout + 30)
            line = b""
            while not line.endswith(b"\n"):
                chunk = channel.recv(1)
                if not chunk:
                    break
                line += chunk
            held.line = line.decode("utf-8", "replace").rstrip("\n")
            yield held
        finally:
            try:
                channel.shutdown_write()
                channel.settimeout(None)
                rest = []
                while chunk := channel.recv(CHUNK):
                    rest.append(chunk)
                held.output = b"".join(rest).decode("utf-8", "replace")
                channel.recv_exit_status()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # the connection is gone: the held command has seen its stdin end and cleans up
            channel.close()


class ChannelFile:
    """A read-only remote file that closes its private SFTP channel with it."""

    def __init__(self, handle, sftp):
        self._handle, self._sftp = handle, sftp

    def read(self, size: int = -1) -> bytes:
        return self._handle.read(size)

    def close(self) -> None:
        self._handle.close()
        self._sftp.close()

    def __enter__(self) -> "ChannelFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def scan_host_key(host: Host) -> paramiko.PKey:
    """The key the host presents, read without authenticating (for `bak ssh trust`)."""
    try:
        sock = socket.create_connection((host.address, host.port), timeout=host.connect_timeout)
    except OSError as exc:
        raise TransportError(f"cannot reach {host.name} ({host.address}:{host.port}): {exc}", where=f"hosts.{host.name}") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=host.connect_timeout)
        return transport.get_remote_server_key()
    except paramiko.SSHException as exc:
        raise TransportError(f"SSH handshake with {host.name} failed: {exc}", where=f"hosts.{host.name}") from None
    finally:
        transport.close()


def trust_host(host: Host, known_hosts: Path, expected_fingerprint: str | None, replace: bool) -> dict:
    """Record the host's key in known_hosts, refusing a mismatch unless asked to replace it."""
    from bak.paths import ensure_private_dir

    if expected_fingerprint is not None:
        expected_fingerprint = check_fingerprint(expected_fingerprint)

    regular_or_absent(known_hosts, f"hosts.{host.name}.known_hosts")
    key = scan_host_key(host)
    actual = fingerprint(key)
    if expected_fingerprint and expected_fingerprint != actual:
        raise HostKeyMismatch(f"{host.name} presents {key.get_name()} {actual}, not the expected {expected_fingerprint}; nothing recorded",
                              where=f"hosts.{host.name}", hint="Check the fingerprint on the host itself before trusting it.")
    entry = known_hosts_entry(host)
    keys = paramiko.HostKeys()
    if known_hosts.exists():
        keys.load(str(known_hosts))
    current = keys.lookup(entry) or {}
    previous = current.get(key.get_name())
    if previous is not None and previous != key and not replace:
        raise HostKeyMismatch(f"{known_hosts} already holds a different {key.get_name()} key for {entry} ({fingerprint(previous)})",
                              where=f"hosts.{host.name}", hint="Pass --replace once you have confirmed the host was reinstalled.")
    if replace and entry in keys:
        del keys[entry]
    keys.add(entry, key.get_name(), key)
    ensure_private_dir(known_hosts.parent)
    keys.save(str(known_hosts))
    known_hosts.chmod(0o600)
    return {"host": host.name, "entry": entry, "key_type": key.get_name(), "fingerprint": actual,
            "known_hosts": str(known_hosts), "already_trusted": previous == key}
