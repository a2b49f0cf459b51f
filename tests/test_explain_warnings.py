"""`iptables-shim explain` warns when the chosen backend's save binary cannot read this netns
(issue 4). The real case (bullseye's iptables 1.8.7 against a table 1.8.9 wrote) runs in
tests/test_images.py; here a stand-in save binary prints the other marker, `[unsupported revision]`,
which this machine's iptables never prints (the text it prints is the point of the stand-in)."""

import json
import os
import subprocess

from conftest import BIN, SYSTEM_PATH

SETUP = "iptables-nft -A INPUT -p tcp --dport 80:90 -j ACCEPT"  # what 1.8.7 cannot read; 1.8.9 can


def explain(path, tmp_path):
    """explain --json in a fresh netns holding one nft rule, with PATH = path."""
    script = '%s && PATH="$1" exec "$2" explain --json' % SETUP
    r = subprocess.run(["unshare", "-n", "/bin/sh", "-c", script, "sh", path, os.path.join(BIN, "iptables-shim")],
                       env={"PATH": SYSTEM_PATH, "IPTABLES_SHIM_CACHE": "off"}, cwd=str(tmp_path),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout.decode())
    assert report["decision"]["backend"] == "nft"
    return report


def test_unsupported_revision_is_warned_about(tmp_path):
    fake = tmp_path / "fake"
    fake.mkdir()
    save = fake / "iptables-nft-save"
    save.write_text("#!/bin/sh\necho '*filter'\necho ':INPUT ACCEPT [0:0]'\n"
                    "echo '-A INPUT -m conntrack [unsupported revision] -j ACCEPT'\necho COMMIT\n")
    save.chmod(0o755)
    report = explain("%s:%s" % (fake, SYSTEM_PATH), tmp_path)
    assert len(report["warnings"]) == 1, report["warnings"]
    assert report["warnings"][0].startswith("%s cannot read what this netns holds" % save)
    assert "[unsupported revision]" in report["warnings"][0]


def test_no_warning_when_the_save_binary_reads_everything(tmp_path):
    report = explain(SYSTEM_PATH, tmp_path)
    assert report["warnings"] == []
