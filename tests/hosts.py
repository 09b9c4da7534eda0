"""Network namespaces standing in for separate hosts (tests/test_hosts.py).

:class:`Network` builds, on a private /24 of its own::

    namespace <prefix>-br:   bridge br0, ports v0 v1 v2 ...
                                          |  |  |      (veth pairs)
    namespace <prefix>-<host>:           eth0 = 10.231.<k>.<10 + i>/24, lo

one namespace per host, each with only ``lo`` and ``eth0`` and no default route, so
a process in it reaches the other hosts only at their addresses on the /24 (the root
namespace's default route, which accepts connections to any address, is not there).
:meth:`Network.spawn` runs a command in a host's namespace and in a UTS namespace of its
own named after the host (``socket.gethostname()`` is the host's name).
:meth:`Network.close` stops what it spawned (its process group, then anything left in
the namespaces) and deletes the namespaces (the veths and the bridge go with them).

Names carry the pid and a random tag (``dynflow-<pid>-<hex>-...``), so parallel or
leftover runs do not clash. Interface names live inside the namespaces only.

Without the means (not root, no ``ip`` or ``unshare``, a failing ``ip netns add``, ...)
:func:`unavailable` raises :class:`NetnsUnavailable`; :func:`skip_or_fail` turns it into
a skip, or into a failure when ``DYNFLOW_REQUIRE_NETNS=1`` (CI).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import pytest

REQUIRE_ENV = "DYNFLOW_REQUIRE_NETNS"
COMMAND_TIMEOUT = 20  # seconds, for one `ip` command
STOP_TIMEOUT = 5  # seconds, before a terminated process is killed
IFNAME = "eth0"  # every host's interface, inside its namespace


class NetnsUnavailable(Exception):
    """Network namespaces cannot be made here; the message says why."""


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test, or fail it when ``DYNFLOW_REQUIRE_NETNS=1`` is set."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 is set but network namespaces are unavailable: {reason}")
    pytest.skip(f"network namespaces are unavailable: {reason}")


def unavailable() -> str | None:
    """Why namespaces cannot be made here (before trying), or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root"
    for program in ("ip", "unshare", "hostname"):
        if shutil.which(program) is None:
            return f"no `{program}` program on PATH"
    return None


def _run(*args: str) -> str:
    """Run a command; NetnsUnavailable with its output when it fails."""
    try:
        p = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsUnavailable(f"`{' '.join(args)}`: {e}") from e
    if p.returncode != 0:
        raise NetnsUnavailable(
            f"`{' '.join(args)}` exited with {p.returncode}: {(p.stderr or p.stdout).strip()}"
        )
    return p.stdout


@dataclass
class Host:
    name: str  # its hostname
    netns: str
    ip: str
    port: str  # its veth's end on the bridge, in the bridge's namespace


@dataclass
class Network:
    """A bridge in a namespace of its own, and one namespace per host on a private /24."""

    hostnames: tuple[str, ...]
    prefix: str = field(default_factory=lambda: f"dynflow-{os.getpid()}-{secrets.token_hex(3)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)  # made so far, bridge's first

    def __post_init__(self) -> None:
        # The /24 is only ever routed inside the namespaces made here, so it cannot
        # collide with the machine's own networks; vary it anyway, for readable captures.
        self.subnet = f"10.231.{os.getpid() % 250}"
        self.bridge_ns = f"{self.prefix}-br"
        for i, name in enumerate(self.hostnames):
            ip = f"{self.subnet}.{10 + i}"
            self.hosts[name] = Host(name, f"{self.prefix}-{name}", ip, port=f"v{i}")

    def create(self) -> Network:
        """Make the namespaces, the bridge and the veths; NetnsUnavailable if it cannot
        (what was made is deleted again)."""
        reason = unavailable()
        if reason:
            raise NetnsUnavailable(reason)
        try:
            self._add_netns(self.bridge_ns)
            _run("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
            for h in self.hosts.values():
                self._add_netns(h.netns)
                _run("ip", "-n", h.netns, "link", "set", "lo", "up")
                _run(
                    "ip", "-n", self.bridge_ns, "link", "add", h.port,
                    "type", "veth", "peer", "name", IFNAME, "netns", h.netns,
                )  # fmt: skip
                _run("ip", "-n", self.bridge_ns, "link", "set", h.port, "master", "br0")
                _run("ip", "-n", self.bridge_ns, "link", "set", h.port, "up")
                _run("ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", IFNAME)
                _run("ip", "-n", h.netns, "link", "set", IFNAME, "up")
        except BaseException:
            self.close()
            raise
        return self

    def _add_netns(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self.namespaces.append(name)

    def spawn(self, host: str, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        """Run ``argv`` on ``host`` (its network namespace, its own hostname), in a new
        session, output to ``log``. ``ip netns exec``, ``unshare`` and ``sh`` each exec
        the next, so the process is ``argv`` itself."""
        h = self.hosts[host]
        command = [
            "ip", "netns", "exec", h.netns,
            "unshare", "--uts",
            "sh", "-c", 'hostname "$0" && exec "$@"', h.name, *argv,
        ]  # fmt: skip
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def rx_bytes(self, host: str) -> int:
        """Bytes received so far by the host's interface (read inside its namespace)."""
        out = _run(
            "ip", "netns", "exec", self.hosts[host].netns,
            "cat", f"/sys/class/net/{IFNAME}/statistics/rx_bytes",
        )  # fmt: skip
        return int(out)

    def stop(self, procs: list[subprocess.Popen] | None = None) -> None:
        """Terminate ``procs`` (default: all spawned, the last spawned first: clients
        and workers before the scheduler they would otherwise wait for), each with its
        process group; kill one still running after STOP_TIMEOUT."""
        for p in reversed(self.procs) if procs is None else procs:
            _signal_group(p, signal.SIGTERM)
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        """Stop every process, then delete the namespaces (hosts first, then the bridge's).

        Best effort throughout: one failure does not keep the rest from being cleaned."""
        errors = []
        try:
            self.stop()
        except Exception as e:  # pragma: no cover - a process that ignores SIGKILL
            errors.append(f"stopping processes: {e}")
        for ns in reversed(self.namespaces):
            # anything still in the namespace was started by this network: kill it
            try:
                pids = _run("ip", "netns", "pids", ns).split()
            except NetnsUnavailable:
                pids = []
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            try:
                _run("ip", "netns", "del", ns)
            except NetnsUnavailable as e:
                errors.append(str(e))
        self.namespaces.clear()
        if errors:
            raise RuntimeError("cleaning up the network namespaces: " + "; ".join(errors))


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # start_new_session: its group id is its pid
    except (ProcessLookupError, PermissionError):
        pass
