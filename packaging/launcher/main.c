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
 * and any it hands over, goes on here in the same process: Python starts and runs
 * `import iptables_shim_entry` (packaging/entry.py), which dispatches on argv[0] and decides. */

#include "Python.h"
#include "route.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

extern char **environ;

/* The shim, its entry and the standard library modules they import, as marshalled bytecode
 * (frozen.c, made by packaging/freeze.py): every import is answered from memory, no file is read
 * or stat'd for it (docs/images.md#one-file). */
extern const struct _frozen iptables_shim_frozen_modules[];

/* Python's entry, guarded: a tree that is damaged or half-replaced by an upgrade (a .pyc truncated,
 * missing or from another version) gives one `iptables-shim:` line and 127, never a traceback on
 * the caller's stderr (SPEC "Errors"; tests/test_damaged_tree.py). The traceback only with
 * IPTABLES_SHIM_DEBUG=1, for whoever debugs it. */
#define GUARDED_ENTRY \
    L"try:\n" \
    L"    import iptables_shim_entry\n" \
    L"except SystemExit:\n" \
    L"    raise\n" \
    L"except BaseException as e:\n" \
    L"    import sys, posix\n" \
    L"    if posix.environ.get(b'IPTABLES_SHIM_DEBUG') == b'1':\n" \
    L"        sys.excepthook(type(e), e, e.__traceback__)\n" \
    L"    what = ' '.join(('%s: %s' % (type(e).__name__, e)).split())[:300]\n" \
    L"    sys.stderr.write('iptables-shim: the shim at %s is damaged or half-replaced (%s); nothing was run: '\n" \
    L"                     'reinstall it (apt-get install --reinstall iptables-shim, or copy the tree again)\\n'\n" \
    L"                     % (sys.executable.rpartition('/')[0], what))\n" \
    L"    sys.exit(127)\n"

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
 * chroot), the path execve was given (AT_EXECFN) made real. */
static int own_path(char *out)
{
    ssize_t n = readlink("/proc/self/exe", out, PATH_MAX - 1);
    if (n > 0) {
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
    return Py_BuildValue("(ss)", answer.binary, answer.line);
}

static PyMethodDef route_methods[] = {
    {"settle", route_settle_py, METH_VARARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef route_module = {
    .m_base = PyModuleDef_HEAD_INIT, .m_name = "_iptables_shim_route", .m_size = -1, .m_methods = route_methods,
};

static PyObject *route_module_init(void)
{
    return PyModule_Create(&route_module);
}

int main(int argc, char **argv)
{
    if (own_path(exe) != 0)
        return fail("cannot find its own executable (neither /proc/self/exe nor AT_EXECFN): mount /proc");

    /* The C route: returns only when it hands the call to Python (or its execv failed). */
    static struct route_answer answer;
    route_settle(argc, argv, environ, exe, &answer);
    if (!answer.handover)
        route_exec(argc, argv, &answer);

    /* Isolated: no PYTHON* variables, no user site, no locale coercion (which would set LC_CTYPE
     * in the environment the real iptables inherits), no signal handlers beyond Python's own. */
    if (PyImport_AppendInittab("_iptables_shim_route", route_module_init) != 0)
        return fail("Python configuration failed (out of memory?)");
    PyImport_FrozenModules = iptables_shim_frozen_modules;
    PyPreConfig preconfig;
    PyPreConfig_InitIsolatedConfig(&preconfig);
    preconfig.utf8_mode = 1; /* scratch images have no locale; argv and paths as UTF-8/bytes */
    PyStatus status = Py_PreInitialize(&preconfig);
    if (PyStatus_Exception(status))
        return fail("Python pre-initialisation failed");

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 0;
    config.write_bytecode = 0;
    config.pathconfig_warnings = 0; /* nothing on the caller's stderr (SPEC "Exec") */
    config.optimization_level = 2;
    config.parse_argv = 0;           /* argv is the caller's iptables arguments, not Python's */
    config.use_frozen_modules = 1;
    config.module_search_paths_set = 1; /* and empty: nothing is imported from a file */
    wchar_t *wexe = Py_DecodeLocale(exe, NULL);
    int bad = !wexe;
    if (!bad) {
        bad = PyStatus_Exception(PyConfig_SetString(&config, &config.executable, wexe)) ||
              PyStatus_Exception(PyConfig_SetString(&config, &config.home, wexe)) ||
              PyStatus_Exception(PyConfig_SetBytesArgv(&config, argc, argv)) ||
              PyStatus_Exception(PyConfig_SetString(&config, &config.run_command, GUARDED_ENTRY));
        PyMem_RawFree(wexe);
    }
    if (bad) {
        PyConfig_Clear(&config);
        return fail("Python configuration failed (out of memory?)");
    }
    status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        if (PyStatus_IsExit(status))
            return status.exitcode;
        return fail("Python initialisation failed: the executable is damaged (copy the tree again)");
    }
    return Py_RunMain();
}
