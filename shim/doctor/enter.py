"""Run a function inside other network namespaces: one forked child per namespace, which joins it
with setns(2), computes, and sends plain data back over a pipe.

A child per namespace, not one process hopping between them: a namespace that crashes or hangs
its reader costs that namespace only, and no state (a socket, a cached fact) can leak from one
namespace's reading into the next. Not `nsenter` per namespace: a process start costs ~10 ms with
Python in it, a fork ~1 ms (README "Auditing a node: doctor" has the figures).

The result travels as marshal data (builtin, unlike json on python3-minimal): dicts, lists,
strings, numbers, booleans and None only.
"""

import marshal
import os
import select
import signal
import time

CLONE_NEWNET = 0x40000000
CHILD_TIMEOUT = 60.0  # seconds one namespace may take before its child is killed
MAX_RESULT = 1 << 24  # bytes: a child sending more is broken


class _LibcSetns(object):
    """setns(2) through the bare _ctypes extension (Python < 3.12 has no os.setns; `import ctypes`
    costs milliseconds and is left out of the frozen build), as legacy_kernel.Sockopt calls
    getsockopt."""

    def __init__(self):
        import _ctypes

        class c_int(_ctypes._SimpleCData):
            _type_ = "i"

        class Libc(object):
            _handle = _ctypes.dlopen(None, 2)  # RTLD_NOW: the symbols of the running process

        class SetNs(_ctypes.CFuncPtr):
            _argtypes_ = (c_int, c_int)
            _restype_ = c_int
            _flags_ = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO

        self.call = SetNs(("setns", Libc()))
        self.get_errno = _ctypes.get_errno

    def __call__(self, fd, nstype):
        if self.call(fd, nstype) != 0:
            err = self.get_errno() or 1
            raise OSError(err, os.strerror(err))


def setns_function():
    """setns(fd, nstype) raising OSError, or None when neither os.setns nor _ctypes exists."""
    if hasattr(os, "setns"):
        return os.setns
    try:
        return _LibcSetns()
    except (ImportError, AttributeError, TypeError, OSError):
        return None


class Job(object):
    """One namespace to read: `fd` an open nsfs file (pinning the namespace while it is read), or
    None to read in this process's own namespace without setns."""

    __slots__ = ("key", "fd", "pid", "pipe", "data", "started")

    def __init__(self, key, fd):
        self.key = key
        self.fd = fd
        self.pid = None
        self.pipe = None
        self.data = []
        self.started = 0.0


def _child(job, work, setns, write_fd):
    """In the forked child: join, compute, send, exit without running the parent's cleanup."""
    code = 0
    try:
        try:
            if job.fd is not None:
                if setns is None:
                    raise OSError(0, "no setns here (neither os.setns nor _ctypes)")
                setns(job.fd, CLONE_NEWNET)
            result = {"ok": work(job.key)}
        except OSError as e:
            result = {"enter_error": e.strerror or str(e), "errno": e.errno or 0}
        except Exception as e:  # report anything as this namespace's failure, never crash the audit
            result = {"error": "%s: %s" % (type(e).__name__, e)}
        data = marshal.dumps(result)
        view = memoryview(data)
        while view:
            view = view[os.write(write_fd, view):]
    except BaseException:
        code = 3
    finally:
        os._exit(code)


def _finish(job, status):
    """The result of a finished child: its data, or why there is none."""
    raw = b"".join(job.data)
    if raw:
        try:
            return marshal.loads(raw)
        except (ValueError, EOFError, TypeError):
            pass
    if status is None:
        return {"error": "the reading child took longer than %d s and was killed" % CHILD_TIMEOUT}
    if os.WIFSIGNALED(status):
        return {"error": "the reading child died of signal %d" % os.WTERMSIG(status)}
    return {"error": "the reading child exited %d without a result" % os.waitstatus_to_exitcode(status)
            if hasattr(os, "waitstatus_to_exitcode") else "the reading child sent no result"}


def run_all(jobs, work, parallel=2, on_start=None):
    """{job.key: result} for every job, at most `parallel` children at a time. work(key) runs in
    the child (inside the namespace) and returns plain data; each result is {"ok": data} or
    {"enter_error": ..., "errno": n} or {"error": ...}. on_start(job) -> job or None is called just
    before a child is forked, to open the namespace then (not all at once: a node with thousands of
    namespaces would run out of file descriptors); None skips the job (it is gone)."""
    setns = setns_function()
    pending = list(reversed(jobs))
    running = {}  # read fd -> job
    results = {}
    poller = select.poll()
    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop()
            if on_start is not None:
                job = on_start(job)
                if job is None:
                    continue
            read_fd, write_fd = os.pipe()
            try:
                pid = os.fork()
            except OSError as e:
                os.close(read_fd)
                os.close(write_fd)
                if job.fd is not None:
                    os.close(job.fd)
                results[job.key] = {"error": "fork failed: %s" % e.strerror}
                continue
            if pid == 0:
                os.close(read_fd)
                _child(job, work, setns, write_fd)
            os.close(write_fd)
            if job.fd is not None:
                os.close(job.fd)
                job.fd = None
            job.pid, job.pipe, job.started = pid, read_fd, time.monotonic()
            running[read_fd] = job
            poller.register(read_fd, select.POLLIN | select.POLLHUP)
        if not running:
            continue
        now = time.monotonic()
        wait = min(job.started + CHILD_TIMEOUT for job in running.values()) - now
        for fd, _ in poller.poll(max(0, int(wait * 1000)) + 1):
            job = running[fd]
            chunk = os.read(fd, 65536)
            if chunk and sum(len(c) for c in job.data) < MAX_RESULT:
                job.data.append(chunk)
                continue
            if chunk:
                os.kill(job.pid, signal.SIGKILL)
            poller.unregister(fd)
            os.close(fd)
            del running[fd]
            _, status = os.waitpid(job.pid, 0)
            results[job.key] = _finish(job, status)
        now = time.monotonic()
        for fd, job in list(running.items()):
            if now - job.started > CHILD_TIMEOUT:
                os.kill(job.pid, signal.SIGKILL)
                os.waitpid(job.pid, 0)
                poller.unregister(fd)
                os.close(fd)
                del running[fd]
                job.data = []
                results[job.key] = _finish(job, None)
    return results
