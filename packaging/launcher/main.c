/* The frozen iptables-shim's main: CPython embedded in one static executable (packaging/build.sh
 * links it in place of Programs/python.c). It finds its tree from its own executable, never from
 * the environment, so that nothing the caller set (PYTHONHOME, PYTHONPATH, LD_*) changes it and
 * nothing it needs is put into the environment the real iptables inherits (docs/images.md).
 *
 *   tree/iptables-shim        this executable (the six names are links to it), which carries the
 *                             interpreter, the shim and the standard library modules the shim
 *                             imports, frozen in (packaging/freeze.py: iptables_shim_frozen_modules)
 *
 * First the C route (route.c) answers the calls that need no deciding (the override, the caller's
 * own facts, a trusted cache entry) and execs, before Python is even initialised. Every other call,
 * and any it hands over, goes on here in the same process: Python starts and imports
 * iptables_shim_entry (packaging/entry.py), which dispatches on argv[0] and decides. */

/* Compiled as CPython compiles its own Programs/python.c (-DPy_BUILD_CORE), for one internal:
 * the main interpreter's collector switch (_PyRuntime), of the CPython 3.11 build.sh builds. */
#define Py_BUILD_CORE 1
#include "Python.h"
#include "internal/pycore_runtime.h"
#include "memory.h"
#include "route.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

extern char **environ;

/* The shim, its entry and the standard library modules they import, as marshalled bytecode
 * (frozen.c, made by packaging/freeze.py): every import is answered from memory, no file is read
 * or stat'd for it (docs/images.md#one-file). */
extern const struct _frozen iptables_shim_frozen_modules[];
extern const char *const iptables_shim_call_modules[];

/* The frozen module main.c imports once Python has started: packaging/entry.py, which guards
 * itself (a damaged executable gives one line, never a traceback: tests/test_damaged_tree.py). */
#define ENTRY "iptables_shim_entry"

/* The tree's executable, for the route module below. */
static char exe[PATH_MAX];

/* Exit status of a shim that executed nothing (SPEC "Errors"). */
#define NOTHING_RUN 127

static int fail(const char *what)
{
    /* The one line of the shim's own errors (shim/errors.py writes the same prefix). */
    fprintf(stderr, "iptables-shim: %s\n", what);
    return NOTHING_RUN;
}

/* The real path of this executable: /proc/self/exe, or, where /proc is not mounted (a bare
 * chroot), the path execve was given (AT_EXECFN) made real. A link that fills the buffer may have
 * been cut short: not taken. */
static int own_path(char *out)
{
    ssize_t n = readlink("/proc/self/exe", out, PATH_MAX);
    if (n > 0 && n < PATH_MAX) {
        out[n] = '\0';
        return 0;
    }
    const char *execfn = (const char *)getauxval(AT_EXECFN);
    return execfn && realpath(execfn, out) ? 0 : -1;
}

/* _iptables_shim_route.settle(name) -> (binary, line) where the C route answers a call of `name`
 * in this process's environment, (None, why not) where it hands it to Python: what `explain` says
 * of the route (shim/cli.py). */
static PyObject *route_settle_py(PyObject *self, PyObject *args)
{
    const char *name;
    if (!PyArg_ParseTuple(args, "s:settle", &name))
        return NULL;
    static struct route_answer answer;
    route_settle_name(name, environ, exe, &answer);
    if (answer.handover)
        return Py_BuildValue("(Os)", Py_None, answer.handover);
    /* Paths are bytes: decoded as os.fsdecode does (surrogateescape), so explain prints them as
     * the file system holds them (tests/test_frozen_situations.py::test_explain_with_a_path_that_is_not_utf8). */
    return Py_BuildValue("(NN)", PyUnicode_DecodeFSDefault(answer.binary), PyUnicode_DecodeFSDefault(answer.line));
}

/* This call's answer by the C route, whose exec failed before Python started (main below). */
static struct route_answer this_call;

/* _iptables_shim_route.logged() -> (log file, line) the C route wrote for this call before its exec
 * failed, else None: Python, deciding again, does not write the same line twice (shim.main.report). */
static PyObject *route_logged_py(PyObject *self, PyObject *args)
{
    if (!this_call.logged)
        Py_RETURN_NONE;
    return Py_BuildValue("(NN)", PyUnicode_DecodeFSDefault(this_call.log_path), PyUnicode_DecodeFSDefault(this_call.line));
}

/* _iptables_shim_route.write_whole(fd, data) -> bool: shim.writes.write_whole in C (route.c), so
 * that Python's own writes in the frozen tree need no signal module, whose import reads all 64
 * dispositions (a netns's first call stores its cache entry). */
static PyObject *route_write_whole_py(PyObject *self, PyObject *args)
{
    int fd, r;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iy*:write_whole", &fd, &data))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    r = route_write_whole(fd, data.buf, (size_t)data.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    return PyBool_FromLong(r == 0);
}

static PyMethodDef route_methods[] = {
    {"settle", route_settle_py, METH_VARARGS, NULL},
    {"logged", route_logged_py, METH_NOARGS, NULL},
    {"write_whole", route_write_whole_py, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef route_module = {
    .m_base = PyModuleDef_HEAD_INIT, .m_name = "_iptables_shim_route", .m_size = -1, .m_methods = route_methods,
};

/* The module, with CALL_MODULES: the frozen modules a call of the six names may import, in an
 * order that loads each after what its import needs (freeze.py: iptables_shim_call_modules). */
static PyObject *route_module_init(void)
{
    PyObject *module = PyModule_Create(&route_module), *names = PyList_New(0);
    for (const char *const *name = iptables_shim_call_modules; module && names && *name; name++) {
        PyObject *item = PyUnicode_FromString(*name);
        if (!item || PyList_Append(names, item) != 0)
            Py_CLEAR(names);
        Py_XDECREF(item);
    }
    PyObject *tuple = names ? PyList_AsTuple(names) : NULL;
    if (!module || !tuple || PyModule_AddObjectRef(module, "CALL_MODULES", tuple) != 0)
        Py_CLEAR(module);
    Py_XDECREF(tuple);
    Py_XDECREF(names);
    return module;
}

/* Python needs a few MiB that the C route does not: doctor, the largest, about 4.5 MiB beyond the
 * executable's own mappings (measured with ulimit -v). Where an address-space limit leaves less
 * than twice that, Python would fail halfway through its start (a traceback, or a MemoryError
 * read as damage): one line naming the limit instead (tests/test_frozen_situations.py). */
#define PYTHON_HEADROOM (8u << 20)

static int address_space_short(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return 0;
    void *p = mmap(NULL, PYTHON_HEADROOM, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return errno == ENOMEM;
    munmap(p, PYTHON_HEADROOM);
    return 0;
}

/* Python's start and a call's imports need about 40 KiB of stack where the C route needs 24 (the
 * kernel's random offset of the stack top, up to 8 KiB, included): under a smaller limit a call
 * handed to Python would die of SIGSEGV halfway through. One line naming the limit instead
 * (tests/test_fast_route.py::test_a_small_stack_never_kills_the_call). */
#define PYTHON_STACK (48u << 10)

static int stack_short(void)
{
    struct rlimit rl;
    return getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < PYTHON_STACK;
}

/* Python could not start for want of memory: the limit that caused it, where one is set. */
static int no_memory(void)
{
    struct rlimit rl;
    char line[256];
    if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
        snprintf(line, sizeof line, "out of memory: the address-space limit (ulimit -v %llu) leaves Python too "
                 "little to start; nothing was run: raise it", (unsigned long long)(rl.rlim_cur / 1024));
    else
        snprintf(line, sizeof line, "out of memory: Python could not start; nothing was run");
    return fail(line);
}

/* packaging/launcher/memory.c: for a call of the six names, whose Python lives milliseconds. A
 * caller with an address-space limit keeps CPython's allocators: the region would count against
 * the headroom measured above. */
static void use_region(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur != RLIM_INFINITY || region_map() != 0)
        return;
    populate_data();
    PyObjectArenaAllocator arenas = {NULL, arena_map, arena_unmap};
    PyObject_SetArenaAllocator(&arenas);
    PyMemAllocatorEx raw = {NULL, region_malloc, region_calloc, region_realloc, region_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &raw);
}

int main(int argc, char **argv)
{
    /* Set-user-ID, set-group-ID or file capabilities: the shim would run the caller's PATH with
     * privileges the caller does not have (SPEC "Two routes"; tests/test_frozen_situations.py). */
    if (getauxval(AT_SECURE))
        return fail("started set-user-ID, set-group-ID or with file capabilities, it would run the caller's "
                    "PATH with privileges the caller lacks; nothing was run: remove them (chmod u-s,g-s; setcap -r)");
    if (own_path(exe) != 0)
        return fail("cannot find its own executable (neither /proc/self/exe nor AT_EXECFN): mount /proc");

    /* The C route: returns only when it hands the call to Python (or its execv failed). */
    route_settle(argc, argv, environ, exe, &this_call);
    if (!this_call.handover)
        route_exec(argc, argv, &this_call);

    if (address_space_short())
        return no_memory();
    if (stack_short())
        return fail("the stack limit (ulimit -s) is below the 48 KiB Python needs to answer this call; "
                    "nothing was run: raise it");

    /* Isolated: no PYTHON* variables, no user site, no locale coercion (which would set LC_CTYPE
     * in the environment the real iptables inherits). */
    if (PyImport_AppendInittab("_iptables_shim_route", route_module_init) != 0)
        return no_memory();
    PyImport_FrozenModules = iptables_shim_frozen_modules;
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1; /* scratch images have no locale; argv and paths as UTF-8/bytes */
    PyStatus status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        return no_memory(); /* it only allocates */
    if (route_is_shim_name(argc, argv))
        use_region();

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.pathconfig_warnings = 0; /* nothing on the caller's stderr (SPEC "Exec") */
    config.optimization_level = 2;
    config.parse_argv = 0;           /* argv is the caller's iptables arguments, not Python's */
    /* No signal disposition changed (CPython otherwise ignores SIGPIPE and SIGXFSZ): the real
     * binary gets the caller's, as a direct call would (shim.execute; SPEC "Two routes"). */
    config.install_signal_handlers = 0;
    config.use_frozen_modules = 1;
    config.module_search_paths_set = 1; /* and empty: nothing is imported from a file */
    wchar_t *wexe = Py_DecodeLocale(exe, NULL);
    int bad = !wexe;
    if (!bad) {
        bad = PyStatus_Exception(PyConfig_SetString(&config, &config.executable, wexe)) ||
              PyStatus_Exception(PyConfig_SetString(&config, &config.home, wexe)) ||
              PyStatus_Exception(PyConfig_SetBytesArgv(&config, argc, argv));
        PyMem_RawFree(wexe);
    }
    if (bad) {
        PyConfig_Clear(&config);
        return no_memory();
    }
    /* The cyclic collector starts off: a call of the six names ends in execv within milliseconds,
     * and its collections during the start and the imports would only walk what they just made
     * (3.6% of a first call's instructions). The verbs turn it on (packaging/entry.py). The main
     * interpreter's state is static, created by Py_PreInitialize, kept by Py_InitializeFromConfig. */
    _PyRuntime._main_interpreter.gc.enabled = 0;
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        if (PyStatus_IsExit(status))
            return status.exitcode;
        struct rlimit rl;
        if ((getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) ||
            (status.err_msg && strstr(status.err_msg, "memory")))
            return no_memory();
        char line[512];
        snprintf(line, sizeof line, "Python could not start (%s%s%s): the shim at %s is damaged; "
                 "nothing was run: reinstall it (copy the tree again)", status.func ? status.func : "", status.func ? ": " : "",
                 status.err_msg ? status.err_msg : "?", exe);
        return fail(line);
    }
    /* As Py_RunMain would run a command, without compiling one: the entry, frozen. SystemExit
     * (every refusal, every verb) leaves through PyErr_Print, which finalizes and exits with its
     * code; a call that runs its binary never comes back here. */
    PyObject *entry = PyImport_ImportModule(ENTRY);
    if (entry == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_SystemExit)) {
            /* Only where the entry itself does not import (missing, or its bytecode damaged, or no
             * memory for it): past its first lines it catches everything else. */
            int memory = PyErr_ExceptionMatches(PyExc_MemoryError);
            PyErr_Clear();
            if (memory)
                return no_memory();
            char line[PATH_MAX + 200];
            const char *slash = strrchr(exe, '/');
            int dir = slash && slash != exe ? (int)(slash - exe) : 1;
            snprintf(line, sizeof line, "the shim at %.*s is damaged or half-replaced (its entry does not import); "
                     "nothing was run: reinstall it (apt-get install --reinstall iptables-shim, or copy the tree "
                     "again)", dir, exe);
            return fail(line);
        }
        PyErr_Print();
    }
    Py_XDECREF(entry);
    return Py_FinalizeEx() < 0 ? 120 : 0;
}
