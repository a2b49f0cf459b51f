"""deploy/: the systemd units, the Prometheus alert rules, the Kubernetes DaemonSet, each checked by
the program that consumes it.

- systemd-analyze verify on the units as the .deb ships them (its /usr/lib/iptables-shim laid over
  the machine's /usr/lib by a read-only overlay in a private mount namespace, so that ExecStart=
  exists; nothing is written to the machine's /usr).
- promtool check metrics on the textfile of a real `doctor --prometheus` run over network
  namespaces made here (split, hint-disagrees, healthy); promtool check rules and test rules on
  the shipped rules, with the shipped unit tests and with tests whose series are that real run's.
- kubernetes-validate --strict (the Kubernetes OpenAPI schemas it ships, in a venv of the tests
  cached in the workspace, outside the checkout) on the DaemonSet and ServiceAccount.
- The DaemonSet's container under podman + runc as its spec says (the host's PID namespace, only
  the listed capabilities, read-only root, no privilege escalation, the host's /run/netns read-only)
  with the FROM scratch image of packaging/image.sh: it audits a named netns and one reached only
  through a process, again and again (--every); without any one of its capabilities it cannot.
  The container gets `--network none`, not the host's network: podman never runs with the
  machine's own netns here (the audit reads every netns through setns anyway).

From scratch: the venv ~20 s; the rest seconds, but the units and the container need the frozen
tree (tests/test_deb.py builds it once per process) and the container the image (seconds).
"""

import hashlib
import json
import os
import re
import shutil
import subprocess
import time

import pytest

from conftest import REPO
from images import VERSION
import test_deb

DEPLOY = os.path.join(REPO, "deploy")
RULES = os.path.join(DEPLOY, "prometheus", "iptables-shim.rules.yml")
RULES_TEST = os.path.join(DEPLOY, "prometheus", "iptables-shim.rules.test.yml")
MANIFESTS = [os.path.join(DEPLOY, "kubernetes", n) for n in ("serviceaccount.yaml", "daemonset.yaml")]
UNITS = ("iptables-shim-doctor.service", "iptables-shim-doctor.timer")
SHIM = os.path.join(REPO, "bin", "iptables-shim")
# The validators, pinned; the venv is keyed on this list.
TOOLS = ("kubernetes-validate==1.37.0", "cyclonedx-python-lib[json-validation]==11.12.0")
# The oldest Kubernetes with the pod fields the DaemonSet uses (appArmorProfile: 1.30), and the newest.
K8S_VERSIONS = ("1.30.0", "1.37.0")
# What doctor needs, as measured (docs/packaging.md "Capabilities"; the container test below).
CAPABILITIES = ["SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW"]

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: netns, mounts")


def _tool(name):
    if shutil.which(name) is None:
        pytest.skip("needs %s (.ci/setup installs it)" % name)


def tools_python():
    """The venv's python, with the validators; made once per TOOLS in the workspace (~20 s)."""
    ws = test_deb.workspace()
    venv = os.path.join(ws.root, "venvs", "deploy-" + hashlib.sha256(repr(TOOLS).encode()).hexdigest()[:12])
    python = os.path.join(venv, "bin", "python")
    if not os.path.exists(venv + ".done"):
        shutil.rmtree(venv, ignore_errors=True)
        ws.run(["/usr/bin/python3", "-m", "venv", venv], what="venv for the deploy tools")
        ws.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check"] + list(TOOLS),
               what="pip install " + " ".join(TOOLS), timeout=600)
        open(venv + ".done", "w").close()
    return python


def yaml_documents(path):
    """The YAML file as JSON-compatible data (PyYAML of the tools venv)."""
    r = subprocess.run([tools_python(), "-c", "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all("
                        "open(sys.argv[1])))))", path], stdout=subprocess.PIPE, check=True)
    return json.loads(r.stdout)


# -- systemd ---------------------------------------------------------------------------------------

VERIFY = r"""
set -e
x=$1; shift
mount -t overlay overlay -o "lowerdir=$x/usr/lib:/usr/lib" /usr/lib
exec systemd-analyze verify "$@"
"""


def verify_units(extracted, units):
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", VERIFY, "verify",
                        extracted] + units, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.returncode, r.stdout.decode()


@pytest.mark.images
@needs_root
def test_systemd_units_verify_as_packaged(tmp_path):
    _tool("systemd-analyze")
    x = str(tmp_path / "x")
    subprocess.run(["dpkg-deb", "-x", test_deb.built_deb(), x], check=True)
    # What postinst adds: `current`, leading to a whole tree (docs/packaging.md#upgrades).
    os.symlink("shipped", os.path.join(x, "usr", "lib", "iptables-shim", "current"))
    units = [os.path.join(x, "lib", "systemd", "system", u) for u in UNITS]
    for u in UNITS:
        assert open(os.path.join(DEPLOY, "systemd", u)).read() == open(units[UNITS.index(u)]).read()
    assert verify_units(x, units) == (0, "")
    # The check bites: a misspelt setting, or an ExecStart= that is not there.
    with open(units[0]) as f:
        text = f.read()
    for broken in (text.replace("ProtectSystem=", "ProtectSytem="),
                   text.replace("/usr/lib/iptables-shim/iptables-shim", "/usr/lib/iptables-shim/nothing")):
        with open(units[0], "w") as f:
            f.write(broken)
        rc, out = verify_units(x, units)
        assert out != "", broken


# -- Prometheus ------------------------------------------------------------------------------------

def promtool(*args, stdin=None):
    _tool("promtool")
    r = subprocess.run(["promtool"] + list(args), input=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.returncode, r.stdout.decode()


@pytest.fixture(scope="module")
def textfiles(tmp_path_factory):
    """{node: textfile} of real doctor runs (the checkout's shim): node-a audits a split netns, one
    whose hint disagrees with its rules and a healthy one; node-b only the healthy one."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces")
    from namespaces import Netns

    d = tmp_path_factory.mktemp("textfiles")
    spaces = [Netns.create() for _ in range(3)]
    try:
        split, hint, healthy = spaces
        split.ok("iptables-nft -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j DROP")
        hint.ok("iptables-legacy -t mangle -N KUBE-IPTABLES-HINT; iptables-nft -A INPUT -j ACCEPT")
        healthy.ok("iptables-nft -A INPUT -j ACCEPT")
        out = {}
        for node, audited, rc in (("node-a", spaces, 1), ("node-b", [healthy], 0)):
            path = str(d / ("%s.prom" % node))
            args = [SHIM, "doctor", "--prometheus", path]
            for ns in audited:
                args += ["--netns", ns.path]
            r = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "IPTABLES_SHIM_CACHE_DIR": str(d / "cache")})
            assert r.returncode == rc, (node, r.stdout, r.stderr)
            out[node] = path
        return out
    finally:
        for ns in spaces:
            ns.delete()


def samples(path):
    """[(name, labels text, value)] of a textfile."""
    out = []
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        m = re.fullmatch(r"([a-z_]+)(?:\{(.*)\})? (\S+)\n", line)
        assert m, line
        out.append((m.group(1), m.group(2) or "", float(m.group(3))))
    return out


def test_textfile_passes_promtool_check_metrics(textfiles):
    for node, path in sorted(textfiles.items()):
        with open(path, "rb") as f:
            assert promtool("check", "metrics", stdin=f.read()) == (0, ""), node
    got = {(n, l): v for n, l, v in samples(textfiles["node-a"])}
    assert got[("iptables_shim_doctor_namespaces_with_problem", 'problem="split"')] == 1
    assert got[("iptables_shim_doctor_namespaces_with_problem", 'problem="hint-disagrees"')] == 1


def test_alert_rules_check_and_shipped_unit_tests():
    rc, out = promtool("check", "rules", RULES)
    assert rc == 0 and "SUCCESS: 3 rules found" in out, out
    rc, out = promtool("test", "rules", RULES_TEST)
    assert rc == 0 and "SUCCESS" in out, out


def test_alerts_over_a_real_doctor_run(textfiles, tmp_path):
    """The rules over the series node_exporter would export from the real textfiles: node-a keeps
    auditing (its timestamp follows the clock) and has a split and a disagreeing hint; node-b is
    healthy but its audit stopped at 0. The firing alerts at each time are exactly these."""
    series = []
    for node, path in sorted(textfiles.items()):
        for name, labels, value in samples(path):
            labels = ",".join(l for l in (labels, 'instance="%s:9100"' % node, 'job="node"') if l)
            if name == "iptables_shim_doctor_last_run_timestamp_seconds":
                values = "0+60x40" if node == "node-a" else "0x40"  # the audit's own time is 0
            else:
                values = "%gx40" % value
            series.append({"series": "%s{%s}" % (name, labels), "values": values})

    def firing(*alerts):
        return [{"labels": 'ALERTS{alertname="%s",alertstate="firing",instance="%s:9100",job="node",severity="%s"%s}'
                 % (a, node, sev, ',problem="%s"' % problem if problem else ""), "value": 1}
                for a, node, sev, problem in alerts]

    split = ("IptablesShimSplitNetns", "node-a", "critical", "split")
    hint = ("IptablesShimHintDisagrees", "node-a", "warning", "hint-disagrees")
    stale = ("IptablesShimDoctorNotRun", "node-b", "warning", None)
    checks = [(5, []), (11, firing(split, hint)), (14, firing(split, hint)), (16, firing(split, hint, stale))]
    test = {"rule_files": [RULES], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": series,
        "promql_expr_test": [{"expr": 'ALERTS{alertstate="firing"}', "eval_time": "%dm" % t, "exp_samples": exp}
                             for t, exp in checks]}]}
    path = tmp_path / "real.test.yml"
    path.write_text(json.dumps(test))  # JSON is YAML
    rc, out = promtool("test", "rules", str(path))
    assert rc == 0 and "SUCCESS" in out, out


# -- Kubernetes ------------------------------------------------------------------------------------

def kubernetes_validate(paths, version):
    r = subprocess.run([os.path.join(os.path.dirname(tools_python()), "kubernetes-validate"), "--strict",
                        "-k", version] + list(paths), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return r.returncode, r.stdout.decode()


def daemonset():
    docs = yaml_documents(MANIFESTS[1])
    assert len(docs) == 1 and docs[0]["kind"] == "DaemonSet"
    return docs[0]


def test_manifests_validate_against_the_kubernetes_schemas(tmp_path):
    for version in K8S_VERSIONS:
        rc, out = kubernetes_validate(MANIFESTS, version)
        assert rc == 0 and out.count("passed for resource") == 2, (version, out)
    # The check bites: a field the schema does not have, a capability list that is not a list.
    text = open(MANIFESTS[1]).read()
    for broken in (text.replace("hostPID:", "hostPid:"), text.replace('add: ["SYS_ADMIN"', 'add: "SYS_ADMIN"#')):
        path = tmp_path / "broken.yaml"
        path.write_text(broken)
        rc, out = kubernetes_validate([str(path)], K8S_VERSIONS[-1])
        assert rc != 0, (broken, out)

    ds = daemonset()
    pod = ds["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert ctr["image"] == "localhost/iptables-shim:" + VERSION
    assert ctr["command"][:2] == ["/opt/iptables-shim/iptables-shim", "doctor"]
    assert pod["hostPID"] is True and pod["serviceAccountName"] == "iptables-shim-doctor"
    assert pod["automountServiceAccountToken"] is False
    sc = ctr["securityContext"]
    assert sc["capabilities"] == {"drop": ["ALL"], "add": CAPABILITIES}
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    assert mounts["netns"]["readOnly"] and mounts["cache"]["readOnly"], mounts
    (sa,) = yaml_documents(MANIFESTS[0])
    assert sa["metadata"]["name"] == pod["serviceAccountName"] and sa["automountServiceAccountToken"] is False


def test_doctor_every_refuses_what_is_not_a_number_of_seconds():
    for bad in (["--every", "0"], ["--every", "5m"], ["--every"], ["--every=-1"]):
        r = subprocess.run([SHIM, "doctor"] + bad, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        err = r.stderr.decode()
        assert r.returncode == 2 and r.stdout == b"" and len(err.splitlines()) == 1, (bad, err)
        assert err.startswith("iptables-shim: --every takes a whole number of seconds"), err


# -- the DaemonSet's container, under podman ------------------------------------------------------

def podman_args(ds, caps, cache_dir, textfile_dir, name):
    """`podman run` arguments for the DaemonSet's container, from its spec."""
    pod = ds["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    sc = ctr["securityContext"]
    args = ["run", "-d", "--name", name, "--network", "none", "--user", str(sc["runAsUser"]),
            "--cap-drop", "all", "--cap-add", ",".join(caps)]
    if pod.get("hostPID"):
        args += ["--pid", "host"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"]}
    # The host's /run/netns as it is; the cache and the textfile directories are this test's.
    host = {"/run/netns": "/run/netns", "/run/iptables-shim": cache_dir,
            "/var/lib/prometheus/node-exporter": textfile_dir}
    for m in ctr["volumeMounts"]:
        opts = ["ro"] if m.get("readOnly") else []
        if m.get("mountPropagation") == "HostToContainer":
            opts.append("rslave")
        args += ["-v", "%s:%s%s" % (host[volumes[m["name"]]], m["mountPath"], ":" + ",".join(opts) if opts else "")]
    return args, ctr


@pytest.fixture(scope="module")
def scratch_image():
    from test_images import make_shim_images

    tree = test_deb.frozen_tree()
    r = subprocess.run(["readelf", "-l", os.path.join(tree, "iptables-shim")], stdout=subprocess.PIPE)
    if b"Requesting program interpreter" in r.stdout:
        pytest.skip("the frozen tree is dynamically linked: the FROM scratch image needs the static one")
    names = make_shim_images(test_deb.workspace(), {"amd64": tree})
    return names[0]


@pytest.mark.images
@needs_root
def test_daemonset_container_audits_with_only_its_capabilities(scratch_image, make_netns, tmp_path):
    ws = test_deb.workspace()
    ds = daemonset()
    split = make_netns()
    split.ok("iptables-nft -A INPUT -j ACCEPT; iptables-legacy -A INPUT -j DROP")
    # A netns that only a process leads to (no name): reached through /proc/PID/ns/net.
    holder = subprocess.Popen(["unshare", "--net", "sh", "-c", "iptables-nft -A INPUT -j ACCEPT && "
                               "iptables-legacy -A INPUT -j DROP && exec sleep 300"])
    try:
        inode = None
        for _ in range(100):
            link = os.readlink("/proc/%d/ns/net" % holder.pid)
            if link != os.readlink("/proc/self/ns/net"):
                inode = int(link.split("[")[1].rstrip("]"))
                time.sleep(0.3)  # its rules are written
                break
            time.sleep(0.05)
        assert inode

        def run(caps, command, tag):
            cache, textfile = tmp_path / ("cache-" + tag), tmp_path / ("textfile-" + tag)
            cache.mkdir(mode=0o755)
            textfile.mkdir()
            name = "shimtest-doctor-%s-%d" % (tag, os.getpid())
            args, ctr = podman_args(ds, caps, str(cache), str(textfile), name)
            ws.podman(args + [scratch_image] + command(ctr["command"]), what="podman run doctor " + tag)
            return name, textfile

        # As the spec says, every 1 s instead of 300: two audits written, the split namespaces seen.
        every = lambda cmd: [("1" if cmd[i - 1] == "--every" else a) for i, a in enumerate(cmd)]
        name, textfile = run(CAPABILITIES, every, "all")
        try:
            stamps = set()
            prom = textfile / "iptables_shim.prom"
            for _ in range(300):
                if prom.exists():
                    stamps.add(re.search(r"last_run_timestamp_seconds (\d+)", prom.read_text()).group(1))
                if len(stamps) >= 2:
                    break
                time.sleep(0.1)
            assert len(stamps) >= 2, ws.podman(["logs", name], check=False).stderr
            table = ws.podman(["logs", name], what="podman logs").stdout.decode()
        finally:
            ws.podman(["rm", "-f", "-t", "0", name], check=False, what="podman rm doctor")
        rows = [l for l in table.splitlines() if l.startswith(split.path + " ") or l.startswith("netns:[%d] " % inode)]
        assert len(rows) >= 4 and all(l.rstrip().endswith("split") for l in rows), table

        # One capability fewer, one audit as JSON: our two namespaces can no longer be read.
        once = lambda cmd: [a for i, a in enumerate(cmd) if a != "--every" and cmd[i - 1] != "--every"] + ["--json"]
        for missing in CAPABILITIES:
            name, _ = run([c for c in CAPABILITIES if c != missing], once, missing.lower())
            try:
                ws.podman(["wait", name], what="podman wait", timeout=120)
                report = json.loads(ws.podman(["logs", name], what="podman logs").stdout.decode())
            finally:
                ws.podman(["rm", "-f", "-t", "0", name], check=False, what="podman rm doctor")
            ours = [ns for ns in report["namespaces"] if split.path in ns["names"] or ns["inode"] == inode]
            if missing == "SYS_PTRACE":
                # Nothing leads to the process's netns: another process's /proc/PID/ns is closed.
                assert [ns["names"] for ns in ours] == [[split.path]], ours
                assert any(holder.pid in h["pids"] for h in report["hidden_processes"]), report["hidden_processes"]
            else:
                assert ours and all(any(p["kind"] == "unreadable" for p in ns["problems"]) for ns in ours), (missing, ours)
                assert not any(p["kind"] == "split" for ns in ours for p in ns["problems"]), (missing, ours)
    finally:
        holder.kill()
        holder.wait()
