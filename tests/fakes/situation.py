"""Put a caller in a situation, then exec the command (tests/test_fast_route_situations.py).

    /usr/bin/python3 -I -S situation.py SPEC-JSON

SPEC: "mounts" ([source, target, read-only] bind mounts, made first: run it in a private mount
namespace, never the machine's), "root" (chroot into it), "cwd" (chdir, then "delete_cwd": rmdir
it), "uid" (become that user, no groups), "umask", "ignore" and "block" (signal names: every other
signal gets its default disposition, as a direct call from a clean shell would), "record_fd" (moved
to fd 9, tests/fakes/recorder.c's), "close" and "devnull" (standard descriptors closed or on
/dev/null), "rlimits" ({STACK|AS|FSIZE|NOFILE: soft limit}, set last), "exe", "argv" and "env"
(bytes as hex: paths need not be UTF-8). `ready=` on fd 9 says the situation was set. Nothing of
Python's own survives the exec: it ignores SIGPIPE and SIGXFSZ itself, so they are set here like
every other signal.
"""

import json
import os
import resource
import signal
import subprocess
import sys


def unhex(value):
    return bytes.fromhex(value)


def main():
    spec = json.loads(sys.argv[1])
    for source, target, read_only in spec.get("mounts", []):
        source, target = unhex(source), unhex(target)
        subprocess.run(["/usr/bin/mount", "--bind", source, target], check=True)
        if read_only:
            subprocess.run(["/usr/bin/mount", "-o", "remount,bind,ro", target], check=True)
    if spec.get("root"):
        os.chroot(unhex(spec["root"]))
        os.chdir("/")
    if spec.get("cwd"):
        os.chdir(unhex(spec["cwd"]))
        if spec.get("delete_cwd"):
            os.rmdir(unhex(spec["cwd"]))
    if spec.get("uid") is not None:
        os.setgroups([])
        os.setgid(spec["uid"])
        os.setuid(spec["uid"])
    if spec.get("umask") is not None:
        os.umask(spec["umask"])
    ignore = set(spec.get("ignore", []))
    for sig in range(1, signal.NSIG):
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            signal.signal(sig, signal.SIG_IGN if signal.Signals(sig).name in ignore else signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # the C library's own real-time signals
    signal.pthread_sigmask(signal.SIG_SETMASK, {getattr(signal, name) for name in spec.get("block", [])})
    if spec.get("record_fd") is not None:
        os.dup2(spec["record_fd"], 9)
        if spec["record_fd"] != 9:
            os.close(spec["record_fd"])
        os.write(9, b"ready=\n")  # the situation is set: what follows is the command's
    for fd in spec.get("devnull", []):
        null = os.open("/dev/null", os.O_RDWR)
        os.dup2(null, fd)
        os.close(null)
    for fd in spec.get("close", []):
        os.close(fd)
    exe, argv = unhex(spec["exe"]), [unhex(a) for a in spec["argv"]]
    env = {unhex(k): unhex(v) for k, v in spec["env"].items()}
    # Last, and nothing allocated after them: an address space of 8 MiB is less than Python uses.
    limits = [(getattr(resource, "RLIMIT_" + name), value) for name, value in spec.get("rlimits", {}).items()]
    for which, value in limits:
        resource.setrlimit(which, (value, resource.getrlimit(which)[1]))
    try:
        os.execve(exe, argv, env)
    except OSError:
        os._exit(125)  # said by the exit code: the standard streams may be closed


main()
