/* The frozen tree's C route: the answers that need no deciding, given before Python starts.
 *
 * Python (shim/) is the one place that decides (SPEC "Two routes, one decider"). This file only
 * reads what is already settled, exactly as shim/ reads it, and gives Python's answer:
 *
 *   - the override, IPTABLES_SHIM_MODE (step 1);
 *   - the caller's own facts: no CAP_NET_ADMIN runs the default alias (step 0), a host caller
 *     runs its alias's backend where the symlink chain names it and the kernel can run it (step 2);
 *   - a trusted cache entry of this netns that Python wrote (steps 3-5).
 *
 * Anything it cannot read, trust or parse as Python would, and every error, is handed to Python
 * (route_answer.handover says why): then main.c starts the interpreter in the same process, which
 * decides and speaks as if this file did not exist. So a check here may be stricter than Python's
 * (it then costs a Python start), never looser. It never prints, never writes the cache, never
 * asks the kernel about rules. Its names and texts come from shim/ (settled.h, made by
 * settled_h.py); the conformance suite (tests/test_fast_route.py) runs every case both ways.
 *
 * Each read is bounded by a fixed buffer; each call's result is checked. A buffer of a path or
 * more is static, never on the stack: the route runs once per process (explain's settle one call
 * at a time), single-threaded, none of its functions re-entered, and it must run under any stack
 * a caller's limit leaves where Python's route runs, which needs 40 KiB; it needs 24 KiB
 * (tests/test_fast_route.py::test_a_small_stack_never_kills_the_call). Model: runc's nsexec.c,
 * C that runs before the real runtime and returns when it has nothing to do. */

#define _GNU_SOURCE
#include "route.h"
#include "settled.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define N_BACKENDS 2
#define MAX_LINKS 40       /* shim.facts.binaries.link_chain: the kernel's own limit */
#define SHIM_COPY_SIZE 65536 /* is_shim_copy: larger files are executables, smaller ones are read */
#define SHIM_COPY_READ 4096
#define STATUS_READ 16384  /* shim.facts.privilege: one read of /proc/self/status */
#define MODULES_READ (1 << 20)

/* A read that shim/ could not have made the same way: hand the call to Python. */
#define HAND(why) do { out->handover = (why); return; } while (0)

/* -- small pieces -------------------------------------------------------------------------- */

static const char *env_get(char **envp, const char *name)
{
    /* The first NAME=, as CPython's os.environ keeps the first of duplicates. */
    size_t n = strlen(name);
    for (char **e = envp; e && *e; e++)
        if (strncmp(*e, name, n) == 0 && (*e)[n] == '=')
            return *e + n + 1;
    return NULL;
}

static int in_list(const char *value, const char *const *list)
{
    for (int i = 0; list[i]; i++)
        if (strcmp(value, list[i]) == 0)
            return i;
    return -1;
}

/* snprintf that says whether everything fitted. */
static int format(char *buf, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int format(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < size ? 0 : -1;
}

static const char *basename_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

/* One read(2) of at most size bytes of an open file, as Python's posix.read(fd, size). */
static int read_once(int fd, char *buf, size_t size, size_t *len)
{
    ssize_t n;
    do
        n = read(fd, buf, size);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return -1;
    *len = (size_t)n;
    return 0;
}

/* Every byte up to size (Python's f.read(size) and f.read()): -1 on error or when larger. */
static int read_all(int fd, char *buf, size_t size, size_t *len)
{
    size_t got = 0;
    for (;;) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        if (n == 0)
            break;
        got += (size_t)n;
        if (got == size)
            break;
    }
    *len = got;
    return 0;
}

/* -- settings: shim.config.load_settings ----------------------------------------------------- */

static int setting_valid(int index, const char *value)
{
    const struct setting_def *d = &SETTING_DEFS[index];
    if (d->values)
        return in_list(value, d->values) >= 0;
    return value[0] == '/' || (d->path_or_off && strcmp(value, SYSLOG_OFF) == 0);
}

/* Strict UTF-8, as bytes.decode("utf-8"): no overlong forms, no surrogates, nothing past U+10FFFF. */
static int utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c == 0xE0) { n = 2; lo = 0xA0; }
        else if (c == 0xED) { n = 2; hi = 0x9F; }
        else if (c >= 0xE1 && c <= 0xEF) n = 2;
        else if (c == 0xF0) { n = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) n = 3;
        else if (c == 0xF4) { n = 3; hi = 0x8F; }
        else return 0;
        if (i + n >= len)
            return 0;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k <= n; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xBF)
                return 0;
        i += n + 1;
    }
    return 1;
}

/* The whitespace str.strip() removes, of the bytes this parser accepts outside comments. */
static int blank(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static char *strip(char *s, char **end)
{
    while (s < *end && blank(*s))
        s++;
    while (*end > s && blank((*end)[-1]))
        (*end)--;
    return s;
}

/* shim.config.value: the text after a line's `=` up to its comment, a `#` after a space or tab
 * outside the quotes that open the value; *end moves there. */
static void cut_comment(char *text, char **end)
{
    char *from = text;
    while (from < *end && blank(*from))
        from++;
    if (from < *end && (*from == '"' || *from == '\'')) {
        char *close = memchr(from + 1, *from, (size_t)(*end - from - 1));
        if (close)
            from = close + 1;
    }
    if (from < text + 1)
        from = text + 1;
    for (char *p = from; p < *end; p++)
        if (*p == '#' && (p[-1] == ' ' || p[-1] == '\t')) {
            *end = p;
            return;
        }
}

/* shim.config.parse over a file's bytes (NUL-terminated at len, so len < the buffer): values[i]
 * point into data. Comment lines may hold any UTF-8; other lines printable ASCII, tab and CR
 * (Python's strip() knows more whitespace: a line with any other byte goes to Python), a comment
 * after a value included. */
int route_parse_config(char *data, size_t len, const char **values)
{
    if (!utf8_valid((const unsigned char *)data, len))
        return -1;
    char *line = data, *stop = data + len;
    while (line <= stop) {
        char *nl = memchr(line, '\n', (size_t)(stop - line));
        char *end = nl ? nl : stop;
        char *s = strip(line, &end);
        if (s < end && *s != '#') {
            for (char *p = s; p < end; p++)
                if (!blank(*p) && (*p < 0x20 || *p > 0x7e))
                    return -1;
            char *eq = memchr(s, '=', (size_t)(end - s));
            if (!eq)
                return -1; /* Python: not NAME=VALUE */
            char *name_end = eq, *value_end = end;
            cut_comment(eq + 1, &value_end);
            char *name = strip(s, &name_end), *value = strip(eq + 1, &value_end);
            *name_end = '\0';
            int index = -1;
            for (int i = 0; i < SETTING_COUNT; i++)
                if (strcmp(name, SETTING_DEFS[i].name) == 0)
                    index = i;
            if (index < 0)
                return -1; /* Python: unknown setting */
            if (value_end - value >= 2 && value[0] == value_end[-1] && (value[0] == '"' || value[0] == '\'')) {
                value++;
                value_end--;
            }
            *value_end = '\0';
            if (*value) {
                if (!setting_valid(index, value))
                    return -1;
                values[index] = value;
            }
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    return 0;
}

/* Owned by uid and writable by nobody else: the trust rule of the configuration files and the
 * install record (root) and of the cache (the caller's euid). */
static int owned_alone(const struct stat *st, uid_t uid)
{
    return st->st_uid == uid && !(st->st_mode & (S_IWGRP | S_IWOTH));
}

/* shim.cache.open_dir: the directory at path itself, never what a symlink there leads to (-1 when
 * it cannot be opened so). Trailing slashes go first: with one, the kernel follows a final symlink
 * even under O_NOFOLLOW; a last component "." or ".." (what is behind the one before) is refused.
 * What is under it is opened relative to the descriptor: the directory checked is the one read. */
static int open_dir(const char *path)
{
    static char dir[PATH_MAX];
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/')
        n--;
    if (n >= sizeof dir)
        return -1;
    memcpy(dir, path, n);
    dir[n] = '\0';
    const char *last = basename_of(dir);
    if (strcmp(last, ".") == 0 || strcmp(last, "..") == 0)
        return -1;
    return openat(AT_FDCWD, dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
}

/* shim.config.read_file: ENOENT is no file; anything Python would refuse goes to Python. */
static int read_config(const char *path, char *buf, const char **values)
{
    int fd = openat(AT_FDCWD, path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    struct stat st;
    size_t len = 0;
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && owned_alone(&st, 0) &&
             read_once(fd, buf, CONFIG_MAX_FILE + 1, &len) == 0 && len <= CONFIG_MAX_FILE;
    close(fd);
    if (!ok)
        return -1;
    buf[len] = '\0';
    return route_parse_config(buf, len, values);
}

static char config_buffers[2][CONFIG_MAX_FILE + 2];

/* The settings that are set (NULL: unset): the files, then the environment over them. */
static const char *load_settings(char **envp, const char *exe, const char **values)
{
    static char tree_file[PATH_MAX];
    const char *dir_end = strrchr(exe, '/');
    if (!dir_end || format(tree_file, sizeof tree_file, "%.*s/%s", (int)(dir_end - exe), exe, TREE_CONFIG))
        return "the tree's configuration file has no path";
    const char *main_file = env_get(envp, CONFIG_ENV);
    if (!main_file || !*main_file)
        main_file = CONFIG_FILE;
    for (int i = 0; i < SETTING_COUNT; i++)
        values[i] = NULL;
    /* The tree's file first, the main file over it: shim.config.load_settings' reversed(files). */
    if (read_config(tree_file, config_buffers[0], values) != 0)
        return "the tree's configuration file is not one the C route reads (Python says why)";
    if (read_config(main_file, config_buffers[1], values) != 0)
        return "the configuration file is not one the C route reads (Python says why)";
    for (int i = 0; i < SETTING_COUNT; i++) {
        const char *v = env_get(envp, SETTING_DEFS[i].name);
        if (v && *v) {
            if (!setting_valid(i, v))
                return "a setting in the environment is invalid (Python says which)";
            values[i] = v;
        }
    }
    return NULL;
}

/* -- binaries on PATH: shim.facts.binaries ---------------------------------------------------- */

struct identity { int known; dev_t dev; ino_t ino; };

/* binaries.beside: `name` in the directory of `path` as written (an absolute name as it is). */
static int beside(const char *path, const char *name, char *out)
{
    if (name[0] == '/')
        return format(out, PATH_MAX, "%s", name);
    const char *slash = strrchr(path, '/');
    return format(out, PATH_MAX, "%.*s%s", slash ? (int)(slash - path + 1) : 0, path, name);
}

/* path (PATH_MAX) becomes its next link target; -1 at the chain's end, -2 where Python would see
 * more than fits. */
static int next_link(char *path)
{
    static char target[PATH_MAX], next[PATH_MAX];
    ssize_t n = readlink(path, target, sizeof target);
    if (n < 0)
        return -1;
    if ((size_t)n >= sizeof target)
        return -2;
    target[n] = '\0';
    if (beside(path, target, next))
        return -2;
    memcpy(path, next, strlen(next) + 1);
    return 0;
}

/* The last of link_chain(path) into last; -1 if a link could not be followed as Python would. */
static int chain_last(const char *path, char *last)
{
    if (format(last, PATH_MAX, "%s", path))
        return -1;
    for (int links = 0; links < MAX_LINKS; links++) {
        int r = next_link(last);
        if (r == -1)
            break;
        if (r == -2)
            return -1;
    }
    return 0;
}

/* backend_from_links: index in BACKENDS, -1 when the chain does not say, -2 when unreadable. */
static int backend_from_links(const char *path)
{
    static char current[PATH_MAX];
    if (format(current, sizeof current, "%s", path))
        return -2;
    for (int n = 0;; n++) {
        const char *name = basename_of(current);
        for (int b = 0; b < N_BACKENDS; b++) {
            char multi[64], dashed[16];
            if (format(multi, sizeof multi, "xtables-%s-multi", BACKENDS[b]) ||
                format(dashed, sizeof dashed, "-%s", BACKENDS[b]))
                return -2;
            if (strcmp(name, multi) == 0 || strstr(name, dashed))
                return b;
        }
        if (strcmp(name, OLD_MULTI) == 0)
            return in_list("legacy", BACKENDS);
        if (n == MAX_LINKS)
            return -1;
        int r = next_link(current);
        if (r < 0)
            return r;
    }
}

/* binaries.read_head: every byte up to size of the regular file at path; -1 when it cannot be
 * opened or read or is no regular file. O_NONBLOCK: a FIFO put in place of a candidate after its
 * stat must not block the call:
 * tests/test_fast_route_generated.py::test_a_candidate_swapped_for_a_fifo_after_its_stat_never_blocks */
static int read_head(const char *path, char *buf, size_t size, size_t *len)
{
    int fd = openat(AT_FDCWD, path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    int r = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read_all(fd, buf, size, len) : -1;
    close(fd);
    return r;
}

/* is_shim_copy: 1 a copy of the shim, 0 not, -1 unknowable here. */
static int is_shim_copy(const char *path, const struct stat *st)
{
    if (st->st_size > SHIM_COPY_SIZE) {
        static char last[PATH_MAX], mark[PATH_MAX];
        if (chain_last(path, last) != 0 || beside(last, FROZEN_MARK, mark))
            return -1;
        struct stat m;
        return stat(mark, &m) == 0;
    }
    static char head[SHIM_COPY_READ];
    size_t len = 0;
    if (read_head(path, head, sizeof head, &len) != 0)
        return 0; /* Python: None, not a copy */
    return memmem(head, len, SHIM_MARK, strlen(SHIM_MARK)) != NULL;
}

/* find_on_path: found[i] is the first executable regular file named names[i] on PATH that is
 * no shim ("" when none). -1: something Python would read otherwise. */
static int find_on_path(const char *const *names, int count, const char *path_env,
                        const struct identity *shim, char (*found)[PATH_MAX])
{
    for (int i = 0; i < count; i++)
        found[i][0] = '\0';
    const char *p = path_env ? path_env : "";
    for (;;) {
        const char *colon = strchr(p, ':');
        size_t n = colon ? (size_t)(colon - p) : strlen(p);
        static char dir[PATH_MAX];
        if (n > 0 && p[0] == '/') {
            if (n >= sizeof dir)
                return -1;
            memcpy(dir, p, n);
            dir[n] = '\0';
            struct stat ds;
            int searched = !(stat(dir, &ds) == 0 && (ds.st_mode & S_IWOTH));
            while (n > 0 && dir[n - 1] == '/')
                dir[--n] = '\0';
            for (int i = 0; searched && i < count; i++) {
                static char path[PATH_MAX];
                struct stat st;
                if (found[i][0])
                    continue;
                if (format(path, sizeof path, "%s/%s", dir, names[i]))
                    return -1;
                if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
                    continue;
                if (shim->known && st.st_dev == shim->dev && st.st_ino == shim->ino)
                    continue;
                int copy = is_shim_copy(path, &st);
                if (copy < 0)
                    return -1;
                if (copy || (st.st_mode & S_IWOTH))
                    continue;
                if (access(path, X_OK) == 0)
                    memcpy(found[i], path, strlen(path) + 1);
            }
        }
        int missing = 0;
        for (int i = 0; i < count; i++)
            missing |= !found[i][0];
        if (!colon || !missing) /* as Python's loop ends: the rest of PATH cannot change the answer */
            break;
        p = colon + 1;
    }
    return 0;
}

/* is_multicall_binary: iptables' own ELF multi-call binary, which never calls iptables again. */
static int is_multicall_binary(const char *path)
{
    static char last[PATH_MAX];
    if (chain_last(path, last) != 0)
        return -1;
    const char *name = basename_of(last);
    if (strcmp(name, "xtables-nft-multi") && strcmp(name, "xtables-legacy-multi") && strcmp(name, OLD_MULTI))
        return 0;
    char magic[4];
    size_t len = 0;
    return read_head(last, magic, sizeof magic, &len) == 0 && len == 4 && memcmp(magic, "\177ELF", 4) == 0;
}

/* -- the caller's facts: shim.facts.context, privilege, netns, kernel_support ------------------ */

/* context.detect_context: 1 host, 0 container. */
static int host_context(void)
{
    struct stat st, root, init;
    if (stat("/proc/self/ns/pid", &st) != 0 || st.st_ino != PROC_PID_INIT_INO)
        return 0;
    if (stat("/", &root) != 0)
        return 0;
    const char *const roots[] = {"/proc/1/root", "/proc/2/root"};
    for (int i = 0; i < 2; i++)
        if (stat(roots[i], &init) == 0)
            return root.st_dev == init.st_dev && root.st_ino == init.st_ino;
    return stat("/proc/self/ns/mnt", &st) == 0 && st.st_ino == PROC_MNT_INIT_INO;
}

/* The CapEff line of /proc/self/status: 0 parsed (net_admin set), -1 for Python to read. */
int route_parse_capeff(const char *data, size_t len, int *net_admin)
{
    static const char key[] = "CapEff:";
    const char *line = data, *stop = data + len;
    while (line < stop) {
        const char *nl = memchr(line, '\n', (size_t)(stop - line));
        const char *end = nl ? nl : stop;
        if ((size_t)(end - line) >= sizeof key - 1 && memcmp(line, key, sizeof key - 1) == 0) {
            const char *p = line + sizeof key - 1;
            while (p < end && (*p == ' ' || *p == '\t'))
                p++;
            unsigned long long value = 0;
            int digits = 0;
            for (; p < end && digits <= 16; p++, digits++) {
                int d = *p >= '0' && *p <= '9' ? *p - '0' : *p >= 'a' && *p <= 'f' ? *p - 'a' + 10
                      : *p >= 'A' && *p <= 'F' ? *p - 'A' + 10 : -1;
                if (d < 0)
                    break;
                value = value << 4 | (unsigned)d;
            }
            while (p < end && (*p == ' ' || *p == '\t' || *p == '\r'))
                p++;
            if (digits == 0 || digits > 16 || p != end)
                return -1; /* Python's int(x, 16) takes more forms: let it read them */
            *net_admin = (int)(value >> CAP_NET_ADMIN & 1);
            return 0;
        }
        if (!nl)
            break;
        line = nl + 1;
    }
    return -1;
}

static int net_admin(int *value)
{
    int fd = openat(AT_FDCWD, "/proc/self/status", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    static char status[STATUS_READ];
    size_t len = 0;
    int r = read_once(fd, status, sizeof status, &len);
    close(fd);
    return r == 0 ? route_parse_capeff(status, len, value) : -1;
}

/* netns.netns_key: "cookie-N", or -1 where the kernel has no netns cookie. */
static int netns_key(char *key, size_t size)
{
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    uint64_t cookie = 0;
    socklen_t len = sizeof cookie;
    int r = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len);
    close(fd);
    if (r != 0 || len != sizeof cookie)
        return -1;
    return format(key, size, "%s%llu", CACHE_KEY_COOKIE, (unsigned long long)cookie);
}

/* Does /proc/modules list `module`? (kernel_support.loaded_modules: splitlines, first word) */
int route_modules_list(const char *data, size_t len, const char *module)
{
    size_t m = strlen(module);
    const char *line = data, *stop = data + len;
    while (line < stop) {
        const char *end = line;
        while (end < stop && (*end == '\0' || !strchr("\n\r\v\f\x1c\x1d\x1e", *end))) /* strchr finds NUL */
            end++;
        const char *space = memchr(line, ' ', (size_t)(end - line));
        const char *word_end = space ? space : end;
        if ((size_t)(word_end - line) == m && memcmp(line, module, m) == 0)
            return 1;
        line = end + 1;
    }
    return 0;
}

/* Can the kernel run the backend? 1 where Python's kernel_support says anything but "absent"
 * by its first reads (loaded, built in, or unreadable), -1 where it would read further. */
static int backend_can_work(const char *backend)
{
    struct stat st;
    if (strcmp(backend, "legacy") == 0) {
        if (stat("/proc" LEGACY_NAMES, &st) == 0)
            return 1;           /* loaded */
        return errno == ENOENT ? -1 : 1; /* unreadable is unknown, and unknown is not absent */
    }
    if (stat("/sys/module/" NFT_MODULE, &st) == 0 && S_ISDIR(st.st_mode))
        return 1;
    int fd = openat(AT_FDCWD, "/proc/modules", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return errno == ENOENT ? 1 : -1; /* no module support: nothing to load, it is built in */
    static char modules[MODULES_READ];
    size_t len = 0;
    int r = read_all(fd, modules, sizeof modules, &len);
    close(fd);
    if (r != 0 || len == sizeof modules)
        return -1;
    return route_modules_list(modules, len, NFT_MODULE) ? 1 : -1;
}

/* -- the cache: shim.cache.load ---------------------------------------------------------------- */

static int trusted(const struct stat *st, int want_dir, uid_t euid)
{
    return (want_dir ? S_ISDIR(st->st_mode) : S_ISREG(st->st_mode)) && owned_alone(st, euid);
}

/* cache.parse_entry over an entry's bytes: "BACKEND STEP REASON\n". The reason as stored, when it
 * is printable ASCII (any other byte goes to Python, which decodes and logs it its way). */
int route_parse_entry(const char *data, size_t len, int *backend, int *step, char *reason, size_t reason_size)
{
    if (len == 0 || data[len - 1] != '\n' || memchr(data, '\n', len - 1))
        return -1;
    for (size_t i = 0; i + 1 < len; i++)
        if (data[i] < 0x20 || data[i] > 0x7e)
            return -1;
    const char *end = data + len - 1;
    const char *sp1 = memchr(data, ' ', (size_t)(end - data));
    if (!sp1)
        return -1;
    const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(end - sp1 - 1));
    if (!sp2)
        return -1;
    *backend = -1;
    for (int b = 0; b < N_BACKENDS; b++)
        if ((size_t)(sp1 - data) == strlen(BACKENDS[b]) && memcmp(data, BACKENDS[b], (size_t)(sp1 - data)) == 0)
            *backend = b;
    if (*backend < 0 || sp2 == sp1 + 1)
        return -1;
    long value = 0;
    for (const char *p = sp1 + 1; p < sp2; p++) {
        if (*p < '0' || *p > '9')
            return -1;
        if (value < 1000)
            value = value * 10 + (*p - '0');
    }
    *step = (int)value; /* large values stay >= 1000: no cacheable step */
    size_t n = (size_t)(end - sp2 - 1);
    if (n >= reason_size)
        return -1;
    memcpy(reason, sp2 + 1, n);
    reason[n] = '\0';
    return 0;
}

/* -- the default alias that install --alternatives recorded: shim.install.recorded_aliases --------- */

#define RECORD_READ 65536

struct record {
    int state;                     /* 0 not read yet, 1 read (aliases may be empty), -1 unreadable here */
    char alias[SHIM_NAME_COUNT][PATH_MAX]; /* by index in SHIM_NAMES; "" when none */
};

/* Record.parse over the file's bytes (NUL-terminated at len, so len < the buffer): aliases by name
 * (alias[SHIM_NAME_COUNT], by index in SHIM_NAMES, "" when none), the last line of a name winning.
 * -1 where Python would read the text otherwise (anything but printable ASCII, tab and newline); 1
 * where Python refuses the record (then it has no aliases). */
int route_parse_record(char *data, size_t len, char (*alias)[PATH_MAX])
{
    for (size_t i = 0; i < len; i++)
        if ((data[i] < 0x20 || data[i] > 0x7e) && data[i] != '\t' && data[i] != '\n')
            return -1;
    char *line = data, *stop = data + len;
    while (line < stop) {
        char *end = memchr(line, '\n', (size_t)(stop - line));
        if (!end)
            end = stop;
        *end = '\0';
        char *words[7];
        int n = 0;
        for (char *w = strtok(line, " \t"); w; w = strtok(NULL, " \t"))
            words[n < 7 ? n++ : 6] = w;
        line = end + 1;
        if (n == 0 || words[0][0] == '#')
            continue;
        if (strcmp(words[0], "tool") == 0 && n == 2)
            continue;
        if (strcmp(words[0], "group") == 0 && n == 6 && words[5][strspn(words[5], "0123456789")] == '\0' &&
            words[5][0])
            continue;
        if (strcmp(words[0], "alias") == 0 && n == 3 && words[2][0] == '/') {
            int i = in_list(words[1], SHIM_NAMES);
            if (i >= 0 && format(alias[i], PATH_MAX, "%s", words[2]))
                return -1;
            continue;
        }
        return 1;
    }
    return 0;
}

static void read_record(struct record *r, const struct identity *shim)
{
    static char text[RECORD_READ + 1];
    struct stat st, dir;
    memset(r->alias, 0, sizeof r->alias);
    r->state = 1;
    if (stat(STATE_FILE, &st) != 0)
        return; /* with_recorded_aliases: no record */
    /* install.read_record: the directory and the file themselves (no symlink, no trailing slash
     * followed), each fstat'ed; the file opened without blocking and read only when regular. */
    int dir_fd = open_dir(STATE_DIR);
    if (dir_fd < 0)
        return; /* read_record's error: no aliases */
    int fd = openat(dir_fd, STATE_NAME, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    int dir_read = fstat(dir_fd, &dir) == 0;
    close(dir_fd);
    if (fd < 0)
        return; /* read_record's error: no aliases */
    if (!dir_read || fstat(fd, &st) != 0) {
        close(fd);
        r->state = -1;
        return;
    }
    if (!S_ISREG(st.st_mode) || !owned_alone(&st, 0) || !owned_alone(&dir, 0)) {
        close(fd);
        return; /* not trusted: no aliases */
    }
    size_t len = 0;
    int ok = read_all(fd, text, sizeof text, &len) == 0;
    close(fd);
    if (!ok || len == sizeof text) {
        r->state = -1;
        return;
    }
    text[len] = '\0';
    int parsed = route_parse_record(text, len, r->alias);
    if (parsed != 0) {
        memset(r->alias, 0, sizeof r->alias);
        r->state = parsed < 0 ? -1 : 1;
        return;
    }
    for (int i = 0; i < SHIM_NAME_COUNT; i++) { /* those still there, executable, and no shim */
        if (!r->alias[i][0])
            continue;
        if (stat(r->alias[i], &st) != 0 || !S_ISREG(st.st_mode) || access(r->alias[i], X_OK) != 0 ||
            (shim->known && st.st_dev == shim->dev && st.st_ino == shim->ino))
            r->alias[i][0] = '\0';
    }
}

/* -- the answer ---------------------------------------------------------------------------------- */

struct call {
    const char *name;          /* the tool */
    char family[16], suffix[16];
    const char **settings;
    const char *exe;
    const char *path_env;
    struct identity shim;
    struct record record;
};

/* The alias install --alternatives recorded for `name` ("" if none; the record read once a call):
 * resolve.with_recorded_aliases. -1: a record the C route does not read as Python does. */
static int recorded_alias(struct call *c, const char *name, char *out)
{
    int i = in_list(name, SHIM_NAMES);
    out[0] = '\0';
    if (i < 0)
        return 0;
    if (!c->record.state)
        read_record(&c->record, &c->shim);
    if (c->record.state < 0)
        return -1;
    memcpy(out, c->record.alias[i], strlen(c->record.alias[i]) + 1);
    return 0;
}

/* The first `name` on PATH, else (recorded) its recorded alias: "" if none. -1: something the C
 * route does not read as Python does. */
static int lookup(struct call *c, const char *name, int recorded, char *out)
{
    const char *names[1] = {name};
    static char found[1][PATH_MAX];
    if (find_on_path(names, 1, c->path_env, &c->shim, found) != 0)
        return -1;
    memcpy(out, found[0], strlen(found[0]) + 1);
    return out[0] || !recorded ? 0 : recorded_alias(c, name, out);
}

static const char *log_line(struct route_answer *out, const struct call *c, const char *backend, int step,
                            const char *reason, const char *how, const char *key)
{
    out->log_path[0] = '\0';
    out->line[0] = '\0';
    const char *log = c->settings[SETTING_LOG];
    if (!log)
        return NULL;
    if (format(out->log_path, sizeof out->log_path, "%s", log))
        return "the log file's path is longer than the C route holds (Python tries it)";
    if (format(out->line, sizeof out->line, LINE_FORMAT, c->name, out->binary, backend, step, reason, how, key) ||
        strlen(out->line) > MAX_LINE)
        return "the log line is longer than the C route writes whole (Python clips it)";
    for (const unsigned char *p = (const unsigned char *)out->line; *p; p++)
        if (*p < 0x20 || *p == 0x7f)
            return "the log line holds a control character (Python writes it as \\xNN)";
    return NULL;
}

/* choose_binary: the variant of the chosen backend, else the tool's own alias where it runs that
 * backend (a step-0 answer runs the alias as is). -1 where Python would error or ask --version. */
static int choose(const char *variant, const char *alias, int backend, int step, const char *default_alias,
                  int default_backend, char *binary)
{
    const char *path = NULL;
    if (step == NO_PRIVILEGE_STEP && alias[0])
        path = alias;
    else if (variant[0])
        path = variant;
    else if (alias[0]) {
        int b = strcmp(alias, default_alias) == 0 ? default_backend : backend_from_links(alias);
        if (b == backend)
            path = alias;
    }
    return path && !format(binary, PATH_MAX, "%s", path) ? 0 : -1;
}

#define NO_BINARY "no binary of the chosen backend whose name or links say so: Python asks --version or says what is missing"
#define BAD_PATH "a PATH entry or link the C route does not read as Python does"

/* Steps 0 and 2 from the caller's own facts and its default alias (resolve._by_caller). 1 answered,
 * 0 no default alias (the cache may answer), -1 handed over (out->handover). */
static int by_caller(struct call *c, int privileged, struct route_answer *out, int *backend, int *step,
                     char *reason, char *alias, char (*wanted)[64])
{
    static char default_alias[PATH_MAX], variant[PATH_MAX];
    int first = -1;
    for (int i = 0; i < ALIAS_COUNT && first < 0; i++) {
        if (lookup(c, ALIAS_ORDER[i], 1, default_alias) != 0)
            return out->handover = BAD_PATH, -1;
        if (default_alias[0])
            first = i;
    }
    if (first < 0)
        return 0;
    int alias_backend = backend_from_links(default_alias);
    if (alias_backend < 0)
        return out->handover = "the default alias's links do not name its backend: Python asks --version", -1;
    *backend = alias_backend;
    if (!privileged) {
        *step = NO_PRIVILEGE_STEP;
        if (format(reason, ROUTE_TEXT, NO_PRIVILEGE_REASON, BACKENDS[*backend]))
            return out->handover = "a reason too long", -1;
    } else {
        if (backend_can_work(BACKENDS[*backend]) != 1)
            return out->handover = "the kernel's support of the alias's backend needs more reading than the C route does", -1;
        *step = HOST_ALIAS_STEP;
        if (format(reason, ROUTE_TEXT, HOST_ALIAS_REASON, BACKENDS[*backend]))
            return out->handover = "a reason too long", -1;
    }
    /* The tool's own alias: where the search above already looked for its name, that answer (found,
     * or not found and not recorded); else a search of its own. */
    int tool = in_list(c->name, ALIAS_ORDER);
    if (tool == first)
        memcpy(alias, default_alias, strlen(default_alias) + 1);
    else if (tool < first)
        alias[0] = '\0';
    else if (lookup(c, c->name, 1, alias) != 0)
        return out->handover = BAD_PATH, -1;
    if (lookup(c, wanted[*backend], 0, variant) != 0)
        return out->handover = BAD_PATH, -1;
    if (choose(variant, alias, *backend, *step, default_alias, alias_backend, out->binary) != 0)
        return out->handover = NO_BINARY, -1;
    return 1;
}

/* The binary of a decision read from the override or the cache (resolve: the variant and the tool;
 * the recorded aliases only where PATH has neither). 0, or -1 handed over. */
static int binary_of(struct call *c, int backend, int step, char *alias, char (*wanted)[64], struct route_answer *out)
{
    const char *names[2] = {wanted[backend], c->name};
    static char found[2][PATH_MAX];
    if (find_on_path(names, 2, c->path_env, &c->shim, found) != 0)
        return out->handover = BAD_PATH, -1;
    memcpy(alias, found[1], strlen(found[1]) + 1);
    /* resolve.with_recorded_aliases: only where PATH has neither */
    if (!found[0][0] && !alias[0] && recorded_alias(c, c->name, alias) != 0)
        return out->handover = BAD_PATH, -1;
    if (choose(found[0], alias, backend, step, "", -1, out->binary) != 0)
        return out->handover = NO_BINARY, -1;
    return 0;
}

/* A trusted entry of this netns that Python wrote, of steps 3-5 (cache.load): 0, or -1 handed over. */
static int by_cache(const char *cache_dir, char *key, size_t key_size, int *backend, int *step, char *reason,
                    struct route_answer *out)
{
    if (!cache_dir)
        return out->handover = "the cache is off: Python gathers the netns's facts", -1;
    if (netns_key(key, key_size) != 0)
        return out->handover = "no netns cookie (Linux < 5.14): Python decides", -1;
    struct stat st;
    uid_t euid = geteuid();
    int dir_fd = open_dir(cache_dir);
    if (dir_fd < 0)
        return out->handover = "no trusted cache directory: Python decides", -1;
    if (fstat(dir_fd, &st) != 0 || !trusted(&st, 1, euid)) {
        close(dir_fd);
        return out->handover = "no trusted cache directory: Python decides", -1;
    }
    int fd = openat(dir_fd, key, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
    close(dir_fd);
    if (fd < 0)
        return out->handover = "no cache entry for this netns: Python decides", -1;
    static char entry[CACHE_MAX_ENTRY];
    size_t len = 0;
    int ok = fstat(fd, &st) == 0 && trusted(&st, 0, euid) && read_once(fd, entry, sizeof entry, &len) == 0;
    close(fd);
    if (!ok)
        return out->handover = "the cache entry is not trusted: Python decides and replaces it", -1;
    if (route_parse_entry(entry, len, backend, step, reason, ROUTE_TEXT) != 0)
        return out->handover = "the cache entry is not one the C route parses: Python reads it", -1;
    if (*step < CACHEABLE_FIRST || *step > CACHEABLE_LAST)
        return out->handover = "the cache entry holds no step of the netns's own rules or hints: Python decides", -1;
    return 0;
}

static void settle(struct call *c, char **envp, struct route_answer *out)
{
    const char **s = c->settings;
    const char *cache_dir = s[SETTING_CACHE] && strcmp(s[SETTING_CACHE], CACHE_OFF) == 0 ? NULL
                          : s[SETTING_CACHE_DIR] ? s[SETTING_CACHE_DIR] : CACHE_DEFAULT_DIR;
    const char *marker = env_get(envp, REENTRY_MARKER);
    if (marker && *marker)
        HAND("started again by a shim (" REENTRY_MARKER " is set): Python says so");
    if (s[SETTING_FAST_ROUTE] && strcmp(s[SETTING_FAST_ROUTE], FAST_ROUTE_OFF) == 0)
        HAND("IPTABLES_SHIM_FAST_ROUTE=off");
    if (s[SETTING_DEBUG] && strcmp(s[SETTING_DEBUG], DEBUG_ON) == 0)
        HAND("IPTABLES_SHIM_DEBUG=1: Python answers and writes its line on stderr");
    c->path_env = env_get(envp, "PATH");

    char wanted[N_BACKENDS][64]; /* this tool's variants, by backend */
    for (int b = 0; b < N_BACKENDS; b++)
        if (format(wanted[b], sizeof wanted[b], "%s-%s%s", c->family, BACKENDS[b], c->suffix))
            HAND("a name too long");
    static char reason[ROUTE_TEXT], how[ROUTE_TEXT];
    static char alias[PATH_MAX];
    char key[64] = "";
    int backend, step;

    if (s[SETTING_MODE]) { /* step 1: the override */
        backend = in_list(s[SETTING_MODE], BACKENDS);
        step = OVERRIDE_STEP;
        if (format(reason, sizeof reason, OVERRIDE_REASON, s[SETTING_MODE]) || format(how, sizeof how, "%s", HOW_OVERRIDE))
            HAND("a reason too long");
        if (binary_of(c, backend, step, alias, wanted, out) != 0)
            return;
    } else {
        int privileged, by = 0;
        if (net_admin(&privileged) != 0)
            HAND("the caller's privilege cannot be read as Python reads it");
        int host = s[SETTING_CONTEXT] ? strcmp(s[SETTING_CONTEXT], "host") == 0 : host_context();
        if (host || !privileged) {
            by = by_caller(c, privileged, out, &backend, &step, reason, alias, wanted);
            if (by < 0)
                return;
            if (by && format(how, sizeof how, "%s", HOW_CALLER))
                HAND("a reason too long");
        }
        if (!by) { /* steps 3-5 */
            if (by_cache(cache_dir, key, sizeof key, &backend, &step, reason, out) != 0)
                return;
            if (binary_of(c, backend, step, alias, wanted, out) != 0)
                return;
            if (format(how, sizeof how, HOW_CACHE_HIT, cache_dir, key))
                HAND("a cache path too long");
        }
    }
    /* main.reentry_mark: the alias, unless it is iptables' own binary (checked only then, as there). */
    int multicall = strcmp(out->binary, alias) == 0 ? is_multicall_binary(out->binary) : 1;
    if (multicall < 0)
        HAND(BAD_PATH);
    out->mark_reentry = !multicall;
    /* The netns's key, for the log line only, where Python's report() asks it: an answer of the
     * override or the caller's facts never reads the cache. "None": the cache is off, or no cookie. */
    if (!key[0] && !(cache_dir && c->settings[SETTING_LOG] && netns_key(key, sizeof key) == 0))
        memcpy(key, "None", 5);
    const char *why = log_line(out, c, BACKENDS[backend], step, reason, how, key);
    if (why)
        HAND(why);
    out->handover = NULL;
}

void route_settle_name(const char *name, char **envp, const char *exe, struct route_answer *out)
{
    static const char *settings[SETTING_COUNT];
    static struct call c;
    memset(&c, 0, sizeof c);
    c.name = name;
    c.settings = settings;
    c.exe = exe;
    struct stat st;
    memset(out, 0, sizeof *out);
    out->handover = "not one of the six names (the iptables-shim verbs, and errors, are Python's)";
    if (in_list(name, SHIM_NAMES) < 0)
        return;
    if (format(out->exe, sizeof out->exe, "%s", exe))
        HAND("the tree's path is too long");
    const char *dash = strchr(name, '-');
    size_t family = dash ? (size_t)(dash - name) : strlen(name);
    if (format(c.family, sizeof c.family, "%.*s", (int)family, name) ||
        format(c.suffix, sizeof c.suffix, "%s", name + family))
        HAND("a name too long");
    const char *why = load_settings(envp, exe, settings);
    if (why)
        HAND(why);
    if (stat(exe, &st) == 0) {
        c.shim.known = 1;
        c.shim.dev = st.st_dev;
        c.shim.ino = st.st_ino;
    }
    settle(&c, envp, out);
}

int route_is_shim_name(int argc, char **argv)
{
    return argc >= 1 && argv[0] && in_list(basename_of(argv[0]), SHIM_NAMES) >= 0;
}

void route_settle(int argc, char **argv, char **envp, const char *exe, struct route_answer *out)
{
    if (argc < 1 || !argv[0]) {
        memset(out, 0, sizeof *out);
        out->handover = "no argv[0]";
        return;
    }
    route_settle_name(basename_of(argv[0]), envp, exe, out);
}

/* -- the exec: shim.execute.exec_real and shim.log.append ------------------------------------- */

/* shim.writes.write_whole: one write(2) of the shim's own (the log, and, through main.c, Python's log
 * and cache entries), whole or failed. A file-size
 * limit (ulimit -f) makes the kernel send SIGXFSZ, which kills by default: it is ignored for this
 * write, or, where the caller blocks it, the one this write raised is discarded; the caller's
 * disposition, mask and pending signals are as they were (tests/test_frozen_situations.py). */
int route_write_whole(int fd, const char *data, size_t len)
{
    struct sigaction ign = {.sa_handler = SIG_IGN}, old;
    sigset_t mask, pending;
    sigemptyset(&ign.sa_mask);
    if (sigprocmask(SIG_BLOCK, NULL, &mask) != 0 || sigpending(&pending) != 0)
        return -1;
    int blocked = sigismember(&mask, SIGXFSZ) == 1, was_pending = sigismember(&pending, SIGXFSZ) == 1;
    if (!blocked && sigaction(SIGXFSZ, &ign, &old) != 0)
        return -1;
    ssize_t n;
    do
        n = write(fd, data, len);
    while (n < 0 && errno == EINTR);
    if (!blocked)
        sigaction(SIGXFSZ, &old, NULL);
    else if (!was_pending && sigpending(&pending) == 0 && sigismember(&pending, SIGXFSZ) == 1 &&
             sigaction(SIGXFSZ, &ign, &old) == 0) /* setting SIG_IGN discards a pending SIGXFSZ */
        sigaction(SIGXFSZ, &old, NULL);
    return n >= 0 && (size_t)n == len ? 0 : -1;
}

/* 1 where the record was written whole. A log that cannot be written never stops the call. */
static int append_log(const struct route_answer *a)
{
    char stamp[64], record[ROUTE_TEXT + 128];
    time_t now = time(NULL);
    struct tm tm;
    if (!localtime_r(&now, &tm) || strftime(stamp, sizeof stamp, TIME_FORMAT, &tm) == 0)
        return 0;
    if (format(record, sizeof record, RECORD_FORMAT, stamp, (int)getpid(), a->line))
        return 0;
    int fd = openat(AT_FDCWD, a->log_path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, 0640);
    if (fd < 0)
        return 0;
    int ok = route_write_whole(fd, record, strlen(record)) == 0;
    close(fd);
    return ok;
}

void route_exec(int argc, char **argv, struct route_answer *a)
{
    /* The caller's signal dispositions and mask pass to the real binary untouched: the frozen
     * tree's Python changes none either (main.c), so both routes exec as a direct call would. */
    a->logged = a->log_path[0] && append_log(a);
    const char *before = getenv(REENTRY_MARKER); /* unset or empty: settle() handed any other over */
    int had = before != NULL;
    static char *few[256]; /* no allocation (a few system calls) for the usual argv */
    char **args = argc < 256 ? few : calloc((size_t)argc + 1, sizeof *args);
    if (args && (!a->mark_reentry || setenv(REENTRY_MARKER, a->exe, 1) == 0)) {
        args[0] = (char *)basename_of(a->binary);
        for (int i = 1; i < argc; i++)
            args[i] = argv[i];
        args[argc] = NULL;
        execv(a->binary, args);
        if (a->mark_reentry) {
            if (had)
                setenv(REENTRY_MARKER, "", 1);
            else
                unsetenv(REENTRY_MARKER);
        }
    }
    if (args != few)
        free(args);
}
