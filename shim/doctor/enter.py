"""Run a function inside other network namespaces: forked workers that join each namespace in
turn with setns(2), compute, and send plain data back over a pipe.

Forked, not `nsenter` per namespace: a process start with Python in it costs ~10 ms, a fork ~1 ms.
Workers that serve a batch of namespaces, not one fork per namespace: a fresh child pays several
milliseconds of copy-on-write faults as the interpreter touches the heap it shares with its parent
(measured: 2.2 ms of reading per namespace became 6-9 ms per forked child), once per worker this
way. A worker is replaced after BATCH namespaces, and at once when it dies or hangs: one namespace
that crashes or blocks its reader costs that namespace only (it is reported, the rest go on).
Nothing carries over between namespaces in a worker: every probe opens its own sockets in the
namespace the worker is in at that moment, and nothing is cached per process.

Results travel as marshal data (builtin, unlike json on python3-minimal): dicts, lists,
strings, numbers, booleans and None only.
"""

import marshal
import os
import select
import signal
import time

CLONE_NEWNET = 0x40000000
CHILD_TIMEOUT = 60.0  # seconds one namespace may take before its worker is killed
BATCH = 64  # namespaces a worker is given; then a fresh one takes the next batch
MAX_RESULT = 1 << 24  # bytes: a worker sending more for one namespace is broken
_LEN = 4  # bytes of the length before each result


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
        from _iptables_shim import setns  # the frozen tree's builtin (packaging/launcher/shimsys.c)

        return setns
    except ImportError:
        pass
    try:
        return _LibcSetns()
    except (ImportError, AttributeError, TypeError, OSError):
        return None


def join(setns, fd):
    """Make this process's network namespace the one `fd` leads to; raises OSError."""
    if setns is None:
        raise OSError(0, "no setns here (neither os.setns nor _ctypes)")
    setns(fd, CLONE_NEWNET)


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _worker(work, keys, results_fd):
    """In the forked worker: work(key) for each of its keys, each result sent as soon as it is
    known. Never returns: _exit, so that nothing of the parent's (buffers, atexit) runs twice."""
    import gc

    gc.disable()  # a collection would touch (and copy) every page shared with the parent
    code = 0
    try:
        for key in keys:
            try:
                result = work(key)
            except Exception as e:  # this namespace's failure, never the audit's
                result = {"error": "%s: %s" % (type(e).__name__, e)}
            data = marshal.dumps((key, result))
            _write_all(results_fd, len(data).to_bytes(_LEN, "little") + data)
    except BaseException:
        code = 3
    finally:
        os._exit(code)


class _Worker(object):
    __slots__ = ("pid", "results", "keys", "done", "since", "buf")

    def __init__(self, pid, results, keys):
        self.pid, self.results, self.keys = pid, results, keys
        self.done = 0  # keys answered, in order
        self.since = time.monotonic()  # when the last answer (or the start) was
        self.buf = b""


def _spawn(work, keys, others):
    res_r, res_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(res_r)
        for other in others:
            os.close(other.results)
        _worker(work, keys, res_w)
    os.close(res_w)
    return _Worker(pid, res_r, keys)


def _death(status):
    if status is None:
        return "the reading worker took longer than %d s and was killed" % CHILD_TIMEOUT
    if os.WIFSIGNALED(status):
        return "the reading worker died of signal %d" % os.WTERMSIG(status)
    return "the reading worker exited (status %d) without a result" % os.WEXITSTATUS(status)


def run_all(keys, work, parallel=2):
    """{key: work(key)} for every key (ints), computed in at most `parallel` forked workers, each
    given a batch of keys when it is forked (a message per namespace and back would cost two
    wake-ups per namespace: milliseconds each on a loaded machine). A key whose worker died or
    hung on it gets {"error": why}; the keys after it in that batch go to a fresh worker."""
    pending = list(keys)
    results = {}
    workers = {}  # results fd -> _Worker
    poller = select.poll()

    def finish(worker, kill, why=None):
        poller.unregister(worker.results)
        del workers[worker.results]
        if kill:
            try:
                os.kill(worker.pid, signal.SIGKILL)
            except OSError:
                pass
        os.close(worker.results)
        _, status = os.waitpid(worker.pid, 0)
        rest = worker.keys[worker.done:]
        if rest:
            results[rest[0]] = {"error": why or _death(status)}  # the one it was working on
            pending[:0] = rest[1:]

    while pending or workers:
        while pending and len(workers) < parallel:
            batch, pending[:] = pending[:BATCH], pending[BATCH:]
            worker = _spawn(work, batch, list(workers.values()))
            workers[worker.results] = worker
            poller.register(worker.results, select.POLLIN | select.POLLHUP)
        wait = min(w.since for w in workers.values()) + CHILD_TIMEOUT - time.monotonic()
        for fd, _ in poller.poll(int(max(0.0, wait) * 1000) + 1):
            worker = workers[fd]
            chunk = os.read(fd, 65536)
            if not chunk:
                finish(worker, kill=False)
                continue
            worker.buf += chunk
            while len(worker.buf) >= _LEN:
                size = int.from_bytes(worker.buf[:_LEN], "little")
                if size > MAX_RESULT:
                    finish(worker, kill=True, why="the reading worker sent %d bytes for one namespace" % size)
                    break
                if len(worker.buf) < _LEN + size:
                    break
                data, worker.buf = worker.buf[_LEN:_LEN + size], worker.buf[_LEN + size:]
                key = worker.keys[worker.done]
                try:
                    got, result = marshal.loads(data)
                    if got != key:
                        raise ValueError(got)
                except (ValueError, EOFError, TypeError):
                    result = {"error": "the reading worker sent an unreadable result"}
                results[key] = result
                worker.done += 1
                worker.since = time.monotonic()
        now = time.monotonic()
        for worker in list(workers.values()):
            if now - worker.since > CHILD_TIMEOUT:
                finish(worker, kill=True, why=_death(None))
    return results
