"""One call settled both ways, in the caller's own process context (privilege, PID namespace, netns,
environment): the C route (the probe, a subprocess with this same environment) and Python
(shim.main.answer, in this process). Neither stores, logs or runs anything. Prints both as JSON.

    /usr/bin/python3 -I -S compare.py REPO EXE PROBE NAME

Run from croute.compare_script()'s copy, which other users can read. EXE stands for the tree's executable (its identity, its directory's iptables-shim.conf)."""

import json
import os
import subprocess
import sys

repo, exe, probe, name = sys.argv[1:5]
sys.path.insert(0, repo)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # croute.py, copied beside it

from croute import parse_probe  # noqa: E402
from shim.config import LOG  # noqa: E402
from shim.errors import ShimError  # noqa: E402
from shim.main import answer, call_line, environment, reentry_mark  # noqa: E402

c = subprocess.run([probe, exe, name, "-S"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE)
result = {"c": parse_probe(c.stdout), "c_rc": c.returncode, "c_stderr": c.stderr.decode("utf-8", "replace")}
try:
    r, settings = answer(name, environment(), exe, exe.rpartition("/")[0])
    result["python"] = {"source": r.source, "binary": r.binary, "mark": reentry_mark(r, exe) is not None,
                        "log": settings.get(LOG) or "", "line": call_line(r) if settings.get(LOG) else "",
                        "step": r.decision.step}
except ShimError as e:
    result["python"] = {"error": str(e)}
print(json.dumps(result))
