"""Hosts for tests: network namespaces on a bridge, made and torn down by the test.

::

      namespace <prefix>-sw (the switch)
      ┌──────────── bridge br0 ─────────────┐
      │ p1            p2            p3      │   veth pairs
      └─┬─────────────┬─────────────┬───────┘
        eth0          eth0          eth0
      <prefix>-ctl  <prefix>-h1   <prefix>-h2     one namespace per host
      10.213.0.1    10.213.0.2    10.213.0.3

Every address lives only inside these namespaces: nothing is reachable from
the machine's own network, and nothing here reaches it. Interface names are
private to each namespace; only namespace names are global, so they carry
the test run's pid. Everything is removed by :meth:`Network.close`, which
kills every process in the namespaces (all of them started by the test).

Needs root, ``ip`` (iproute2) and, for packet loss, ``nft`` (nftables).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

SUBNET = "10.213.0"
_counter = itertools.count(1)


class NetnsUnavailable(Exception):
    """This machine cannot make namespace hosts; the message says why."""


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=check)


def why_unavailable() -> str | None:
    """None if namespace hosts can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network-namespace hosts need root"
    if shutil.which("ip") is None:
        return "network-namespace hosts need `ip` (apt-get install iproute2)"
    probe = f"zwprobe{os.getpid()}"
    try:
        _run("ip", "netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    name: str  # short name: ctl, h1, ...
    netns: str
    ip: str
    port: str  # its port on the bridge, in the switch namespace


@dataclass
class Network:
    """A bridge and hosts on it, each host a network namespace."""

    prefix: str = field(default_factory=lambda: f"zw{os.getpid()}n{next(_counter)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.switch = f"{self.prefix}-sw"
        self._namespaces: list[str] = []
        try:
            self._add_netns(self.switch)
            _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def _add_netns(self, name: str) -> None:
        self._namespaces.append(name)  # first: torn down even if half made
        _run("ip", "netns", "add", name)
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def run(self, host: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a short command on ``host`` and wait for it (30 s at most)."""
        return _run("ip", "netns", "exec", self.hosts[host].netns, *args)

    def add_host(self, name: str) -> Host:
        n = len(self.hosts) + 1
        host = Host(name, f"{self.prefix}-{name}", f"{SUBNET}.{n}", f"p{n}")
        self._add_netns(host.netns)
        # Made inside the switch namespace, the host end moved straight into
        # its own: no interface ever appears in the machine's namespace.
        _run(
            "ip", "-n", self.switch, "link", "add", host.port, "type", "veth",
            "peer", "name", "eth0", "netns", host.netns,
        )  # fmt: skip
        _run("ip", "-n", self.switch, "link", "set", host.port, "master", "br0")
        _run("ip", "-n", self.switch, "link", "set", host.port, "up")
        _run("ip", "-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        _run("ip", "-n", host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def start(
        self,
        host: str,
        argv: Sequence[str],
        env: dict[str, str] | None = None,
        **popen: object,
    ) -> subprocess.Popen[bytes]:
        """Run ``argv`` on ``host``; killed at :meth:`close` if still running."""
        netns = self.hosts[host].netns
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", netns, *argv],
            env=env,
            stdin=subprocess.DEVNULL,
            **popen,
        )
        self.procs.append(proc)
        return proc

    def pids(self, host: str) -> list[int]:
        out = _run("ip", "netns", "pids", self.hosts[host].netns).stdout
        return [int(p) for p in out.split()]

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process on ``host``, as if it lost power."""
        pids = self.pids(host)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def cut(self, host: str) -> None:
        """Unplug ``host``'s cable at the switch: its packets go nowhere."""
        _run("ip", "-n", self.switch, "link", "set", self.hosts[host].port, "down")

    def restore(self, host: str) -> None:
        _run("ip", "-n", self.switch, "link", "set", self.hosts[host].port, "up")

    def add_loss(self, host: str, percent: int) -> None:
        """Drop ``percent`` % of ``host``'s packets, each way, at random.

        nftables, since this kernel has no netem: ``numgen random mod 100``
        draws 0..99 per packet.
        """
        if shutil.which("nft") is None:
            raise NetnsUnavailable("packet loss needs `nft` (apt-get install nftables)")
        if not 0 < percent < 100:
            raise ValueError(f"loss must be between 0 and 100 %, not {percent}")
        rules = (
            "table inet zwloss {\n"
            "  chain input { type filter hook input priority 0; policy accept;\n"
            f"    numgen random mod 100 < {percent} counter drop; }}\n"
            "  chain output { type filter hook output priority 0; policy accept;\n"
            f"    numgen random mod 100 < {percent} counter drop; }}\n"
            "}\n"
        )
        subprocess.run(
            ["ip", "netns", "exec", self.hosts[host].netns, "nft", "-f", "-"],
            input=rules,
            text=True,
            capture_output=True,
            timeout=30,
            check=True,
        )

    def dropped_packets(self, host: str) -> int:
        """Packets the loss rules of :meth:`add_loss` have dropped on ``host``."""
        out = self.run(host, "nft", "list", "table", "inet", "zwloss").stdout
        return sum(int(n) for n in re.findall(r"counter packets (\d+)", out))

    def close(self) -> None:
        """Kill what runs in the namespaces, then remove them (and so the links)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for ns in self._namespaces:
            out = _run("ip", "netns", "pids", ns, check=False).stdout
            for pid in out.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 10
        for ns in reversed(self._namespaces):
            while _run("ip", "netns", "del", ns, check=False).returncode != 0:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        self._namespaces.clear()
