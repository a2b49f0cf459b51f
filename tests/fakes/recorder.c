/* The recording stand-in of iptables' multi-call binary (tests/test_fast_route_situations.py).
 *
 * Installed as xtables-nft-multi or xtables-legacy-multi (an ELF file of that name, as the shim
 * expects of iptables' own binary), it writes what it was started with to file descriptor 9, a
 * pipe the test holds (never a file: a caller's RLIMIT_FSIZE=0 must not stop the record), then
 * execs the real binary of its name from /usr/sbin with the same argv, in the same process:
 *
 *   exe=   the path execve was given (AT_EXECFN): which binary the shim ran
 *   argv=  its arguments, NUL-separated
 *   env=   its environment, NUL-separated
 *   status= the Umask, SigIgn, SigBlk and SigCgt lines of /proc/self/status
 *   fds=   its open descriptors (fd 9 aside) and what each is, NUL-separated
 *   cwd=   its working directory (or why it has none)
 *   limits= the soft limits of stack, address space, file size and open files
 *
 * one "key=HEX\n" line each, then "end=\n". Static (no libc needed in a chroot), no allocation,
 * and no signal handler: what it reports is what the caller's call handed on. */

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/resource.h>
#include <unistd.h>

#define FD 9

extern char **environ;

static char out[1 << 20];
static size_t used;

static void put_hex(const char *key, const char *data, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    size_t klen = strlen(key);
    if (used + klen + 2 + 2 * len + 1 > sizeof out)
        len = (sizeof out - used - klen - 3) / 2;
    memcpy(out + used, key, klen);
    used += klen;
    out[used++] = '=';
    for (size_t i = 0; i < len; i++) {
        out[used++] = digits[(unsigned char)data[i] >> 4];
        out[used++] = digits[(unsigned char)data[i] & 15];
    }
    out[used++] = '\n';
}

static void put_list(const char *key, char **items)
{
    static char buf[1 << 18];
    size_t n = 0;
    for (char **p = items; p && *p; p++) {
        size_t l = strlen(*p);
        if (n + l + 1 > sizeof buf)
            break;
        memcpy(buf + n, *p, l + 1);
        n += l + 1;
    }
    put_hex(key, buf, n);
}

static void put_status(void)
{
    char buf[16384], keep[1024];
    size_t k = 0;
    int fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC);
    ssize_t n = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
    if (fd >= 0)
        close(fd);
    if (n < 0) {
        put_hex("status", "unreadable", 10);
        return;
    }
    buf[n] = '\0';
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
        if (strncmp(line, "Umask:", 6) && strncmp(line, "SigIgn:", 7) && strncmp(line, "SigBlk:", 7) &&
            strncmp(line, "SigCgt:", 7))
            continue;
        size_t l = strlen(line);
        if (k + l + 1 < sizeof keep) {
            memcpy(keep + k, line, l);
            k += l;
            keep[k++] = '\n';
        }
    }
    put_hex("status", keep, k);
}

static void put_fds(void)
{
    static char buf[1 << 16];
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        put_hex("fds", "unreadable", 10);
        return;
    }
    int own = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        int fd = 0;
        for (const char *c = e->d_name; *c; c++)
            fd = fd * 10 + (*c - '0');
        if (fd == own || fd == FD)
            continue;
        char link[64], target[512];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t l = readlink(link, target, sizeof target - 1);
        target[l < 0 ? 0 : l] = '\0';
        /* A pipe's inode differs from run to run: only that it is a pipe. */
        if (strncmp(target, "pipe:", 5) == 0)
            target[4] = '\0';
        int w = snprintf(buf + n, sizeof buf - n, "%d %s", fd, target);
        if (w < 0 || (size_t)w + 1 >= sizeof buf - n)
            break;
        n += (size_t)w + 1;
    }
    closedir(d);
    put_hex("fds", buf, n);
}

int main(int argc, char **argv)
{
    (void)argc;
    const char *execfn = (const char *)getauxval(AT_EXECFN);
    put_hex("exe", execfn ? execfn : "", execfn ? strlen(execfn) : 0);
    put_list("argv", argv);
    put_list("env", environ);
    put_status();
    put_fds();
    char cwd[4096];
    if (getcwd(cwd, sizeof cwd))
        put_hex("cwd", cwd, strlen(cwd));
    else
        put_hex("cwd", strerror(errno), strlen(strerror(errno)));
    char limits[256];
    struct rlimit r;
    int resources[] = {RLIMIT_STACK, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_NOFILE};
    size_t ln = 0;
    for (int i = 0; i < 4; i++) {
        getrlimit(resources[i], &r);
        ln += (size_t)snprintf(limits + ln, sizeof limits - ln, "%lld ",
                               r.rlim_cur == RLIM_INFINITY ? -1LL : (long long)r.rlim_cur);
    }
    put_hex("limits", limits, ln);
    memcpy(out + used, "end=\n", 5);
    used += 5;
    for (size_t done = 0; done < used;) {
        ssize_t w = write(FD, out + done, used - done);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break;
        done += (size_t)w;
    }
    close(FD);

    /* The real binary of this file's own name (its directory is the test's, the name iptables'). */
    char self[4096], real[4200];
    ssize_t l = readlink("/proc/self/exe", self, sizeof self - 1);
    if (l <= 0)
        return 126;
    self[l] = '\0';
    const char *base = strrchr(self, '/');
    snprintf(real, sizeof real, "/usr/sbin/%s", base ? base + 1 : self);
    execv(real, argv);
    return 126;
}
