/* An LD_PRELOAD library for the tests (tests/croute.py): stat() says a FIFO is a small executable
 * regular file, as if a FIFO were put in place of a candidate binary just after its stat. The shim
 * then opens a FIFO it believes regular: it must not block (tests/test_fast_route_generated.py).
 * Both names: the C route calls stat, Python (built with 64-bit file offsets) stat64. */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <sys/stat.h>

static int faked(int r, struct stat *st)
{
    if (r == 0 && S_ISFIFO(st->st_mode)) {
        st->st_mode = (st->st_mode & ~S_IFMT) | S_IFREG;
        st->st_size = 100;
    }
    return r;
}

int stat(const char *path, struct stat *st)
{
    static int (*real)(const char *, struct stat *);
    if (!real)
        real = (int (*)(const char *, struct stat *))dlsym(RTLD_NEXT, "stat");
    return faked(real(path, st), st);
}

int stat64(const char *path, struct stat64 *st)
{
    static int (*real)(const char *, struct stat64 *);
    if (!real)
        real = (int (*)(const char *, struct stat64 *))dlsym(RTLD_NEXT, "stat64");
    int r = real(path, st);
    if (r == 0 && S_ISFIFO(st->st_mode)) {
        st->st_mode = (st->st_mode & ~S_IFMT) | S_IFREG;
        st->st_size = 100;
    }
    return r;
}
