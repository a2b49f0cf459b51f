"""A real caller: Debian's dockerd (docker.io 20.10) through the shim, in a private netns.

dockerd treats any output of `iptables -N` as a failure ("Could not create nat/DOCKER chain"), so
it is the caller that shows whether the shim keeps off the caller's streams. It runs as it would
inside a pod (docker:dind) whose netns already holds legacy rules: PATH with the shim's bin/ first,
IPTABLES_SHIM_CONTEXT=container, the log file and the system log (a private datagram socket) on.
It must start, every rule of its netns must land in legacy (nft holds nothing at all), and nothing
the shim printed may reach dockerd's log.

dockerd runs in its own mount namespace (`unshare --mount`, private) and joins the netns with
`nsenter --net`: not `ip netns exec`, which remounts /sys and so hides the cgroup mounts dockerd
needs ("Devices cgroup isn't mounted" on this kind of host). Everything it mounts under its data
and exec roots lives in that namespace and dies with it. The machine's own netns is compared
before and after. Skipped where docker.io is not installed (.ci/run installs it).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, SYSTEM_PATH
from namespaces import Netns
from shim_output import SyslogSink

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: dockerd, network and mount namespaces"),
]

START_TIMEOUT = 90


def host_state():
    """The machine's own netns as seen by both backends: must not change."""
    out = []
    for cmd in (["iptables-legacy-save"], ["ip6tables-legacy-save"], ["iptables-nft-save"],
                ["ip6tables-nft-save"], ["nft", "list", "ruleset"], ["ip", "-o", "link"]):
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"PATH": SYSTEM_PATH})
        out.append(b"\n".join(l for l in r.stdout.splitlines() if not l.startswith(b"#")))
    return out


def api(sock_path, method, path, body=None, timeout=30):
    """One HTTP/1.0 request to the Docker API over its unix socket: (status, body)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        data = json.dumps(body).encode() if body is not None else b""
        head = "%s %s HTTP/1.0\r\nHost: docker\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (
            method, path, len(data))
        s.sendall(head.encode() + data)
        chunks = []
        while True:
            c = s.recv(65536)
            if not c:
                break
            chunks.append(c)
    finally:
        s.close()
    raw = b"".join(chunks)
    status = int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/") else 0
    return status, raw.partition(b"\r\n\r\n")[2]


class Dockerd(object):
    def __init__(self, base, netns, env):
        self.base, self.netns = base, netns
        self.sock = os.path.join(base, "docker.sock")
        self.logfile = os.path.join(base, "dockerd.log")
        cmd = ["unshare", "--mount", "nsenter", "--net=" + netns.path, "dockerd",
               "--data-root", os.path.join(base, "data"), "--exec-root", os.path.join(base, "exec"),
               "--pidfile", os.path.join(base, "dockerd.pid"), "-H", "unix://" + self.sock,
               "--storage-driver", "vfs"]
        self.log = open(self.logfile, "wb")
        # unshare and nsenter exec in place: this Popen's pid is dockerd's.
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if os.path.exists(self.sock):
                try:
                    if api(self.sock, "GET", "/_ping", timeout=5) == (200, b"OK"):
                        return True
                except OSError:
                    pass
            time.sleep(0.5)
        return False

    def output(self):
        self.log.flush()
        with open(self.logfile, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def stop(self):
        """SIGTERM dockerd (it stops its own containerd), then SIGKILL what is left of the processes
        started under this test's directories, by pid; then unmount anything still mounted there."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmdline = f.read()
            except OSError:
                continue
            if self.base.encode() in cmdline:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        self.log.close()
        with open("/proc/self/mountinfo") as f:
            mounts = [l.split()[4] for l in f if l.split()[4].startswith(self.base)]
        for m in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", m], check=False)


@pytest.fixture
def dockerd_netns():
    for binary in ("dockerd", "containerd", "runc"):
        if not shutil.which(binary, path=SYSTEM_PATH):
            pytest.skip("%s is not installed: apt-get install docker.io (what .ci/run does)" % binary)
    ns = Netns.create("shimdock-")
    base = tempfile.mkdtemp(prefix="shimdock-", dir="/var/tmp")  # short: the API socket path is < 108 bytes
    try:
        yield ns, base
    finally:
        ns.delete()
        shutil.rmtree(base, ignore_errors=True)


def test_dockerd_through_the_shim_keeps_its_netns_in_legacy(dockerd_netns):
    ns, base = dockerd_netns
    host_before = host_state()
    ns.ok("iptables-legacy -A INPUT -s 192.0.2.1 -j ACCEPT; iptables-legacy -t nat -A PREROUTING -d 192.0.2.2 -j RETURN")
    assert ns.ok("nft list ruleset") == ""
    cache = os.path.join(base, "cache")
    os.mkdir(cache, 0o700)
    shim_log = os.path.join(base, "shim.log")
    sink = SyslogSink(os.path.join(base, "syslog.sock"), timeout=0.2)
    env = {"PATH": BIN + ":" + SYSTEM_PATH, "LC_ALL": "C", "IPTABLES_SHIM_CONTEXT": "container",
           "IPTABLES_SHIM_CACHE_DIR": cache, "IPTABLES_SHIM_LOG": shim_log,
           "IPTABLES_SHIM_SYSLOG_SOCKET": sink.path}
    t0 = time.monotonic()
    d = Dockerd(base, ns, env)
    try:
        ready = d.wait_ready()
        out = d.output()
        assert ready, "dockerd did not start through the shim:\n" + out[-3000:]
        started = time.monotonic() - t0
        # A user network: more chains and rules (bridge, isolation stages), then their removal.
        status, body = api(d.sock, "POST", "/networks/create", {"Name": "shimnet", "Driver": "bridge"})
        assert status == 201, (status, body, d.output()[-2000:])
        status, body = api(d.sock, "DELETE", "/networks/shimnet")
        assert status == 204, (status, body)
        status, body = api(d.sock, "POST", "/networks/create", {"Name": "shimnet2", "Driver": "bridge"})
        assert status == 201, (status, body)
        out = d.output()
    finally:
        d.stop()
    assert "iptables-shim" not in out, "the shim's own text reached dockerd:\n" + "\n".join(
        l for l in out.splitlines() if "iptables-shim" in l)
    # Every rule of the netns is in legacy; nft holds nothing at all (not even an empty table).
    legacy = ns.rules("legacy")
    assert any("DOCKER" in l for l in legacy), legacy
    assert any("MASQUERADE" in l and "172.17." in l for l in legacy), legacy
    assert any("br-" in l for l in legacy), ("shimnet2's rules", legacy)
    assert ns.rules("nft") == [] and ns.rules("nft", "ip6tables") == []
    assert ns.ok("nft list ruleset") == "", "dockerd's calls created nft tables"
    # The shim recorded every call in its log, all legacy; new decisions went to the system log.
    assert os.path.exists(shim_log), "IPTABLES_SHIM_LOG was not written"
    lines = open(shim_log).read().splitlines()
    assert len(lines) >= 10, lines
    assert all("legacy" in l for l in lines), [l for l in lines if "legacy" not in l]
    msgs = sink.messages()
    assert msgs and all("legacy" in m for m in msgs), msgs
    assert host_state() == host_before, "the machine's own netns changed"
    print("dockerd ready after %.1f s; %d iptables calls through the shim, %d system log messages"
          % (started, len(lines), len(msgs)))
