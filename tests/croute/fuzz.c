/* The C route's parsers of untrusted bytes under a fuzzer: cache entries, configuration files,
 * /proc/self/status, /proc/modules and the install record (tests/croute.py,
 * tests/test_fast_route_generated.py).
 *
 * Built with clang's libFuzzer (-fsanitize=fuzzer) it is a fuzz target; built with -DSTANDALONE
 * (any compiler) it runs a fixed, mutated corpus: each file named on the command line, then
 * MUTATIONS deterministic mutations of it. Both under AddressSanitizer and UBSan. The first byte
 * of an input picks the parser. Each input is copied into a buffer of exactly its size (plus the
 * NUL the configuration and record parsers are promised), so any read past it is caught. */

#include "route.h"
#include "settled.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int which = data[0] % 5;
    data++;
    size--;
    char *buf = malloc(size + 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = '\0';
    int backend, step, flag;
    char *reason = malloc(ROUTE_TEXT);
    const char *values[SETTING_COUNT] = {0};
    switch (which) {
    case 0:
        if (reason && route_parse_entry(buf, size, &backend, &step, reason, ROUTE_TEXT) == 0 &&
            (backend < 0 || backend > 1 || strlen(reason) >= ROUTE_TEXT))
            abort();
        break;
    case 1:
        if (route_parse_config(buf, size, values) == 0)
            for (int i = 0; i < SETTING_COUNT; i++)
                if (values[i] && (values[i] < buf || values[i] > buf + size))
                    abort();
        break;
    case 2:
        if (route_parse_capeff(buf, size, &flag) == 0 && flag != 0 && flag != 1)
            abort();
        break;
    case 3:
        route_modules_list(buf, size, "nf_tables");
        break;
    default: {
        char (*alias)[PATH_MAX] = calloc(SHIM_NAME_COUNT, PATH_MAX);
        if (!alias)
            break;
        flag = route_parse_record(buf, size, alias);
        if (flag < -1 || flag > 1)
            abort();
        for (int i = 0; flag == 0 && i < SHIM_NAME_COUNT; i++)
            if (alias[i][0] && (alias[i][0] != '/' || strlen(alias[i]) >= PATH_MAX || strpbrk(alias[i], " \t\n")))
                abort();
        free(alias);
    }
    }
    free(reason);
    free(buf);
    return 0;
}

#ifdef STANDALONE
#define MUTATIONS 20000

static uint64_t state = 0x9E3779B97F4A7C15ULL;
static uint64_t next(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

int main(int argc, char **argv)
{
    static uint8_t seed[8192], input[8192 + 64];
    long runs = 0;
    for (int f = 1; f < argc; f++) {
        FILE *in = fopen(argv[f], "rb");
        if (!in)
            return 2;
        size_t n = fread(seed, 1, sizeof seed, in);
        fclose(in);
        LLVMFuzzerTestOneInput(seed, n);
        for (int m = 0; m < MUTATIONS; m++) {
            size_t len = n;
            memcpy(input, seed, n);
            for (int k = 1 + (int)(next() % 4); k > 0; k--) {
                size_t at = len ? (size_t)(next() % len) : 0;
                switch (next() % 4) {
                case 0: if (len) input[at] = (uint8_t)next(); break;             /* a byte changed */
                case 1: if (len > 1) len = at ? at : 1; break;                   /* cut short */
                case 2: if (len < sizeof input - 1) { memmove(input + at + 1, input + at, len - at); /* a byte in */
                            input[at] = "\n =#\"'0123456789\t\r\xc3\xa9"[next() % 19]; len++; } break;
                default: if (len) input[at] ^= (uint8_t)(1u << (next() % 8));  /* a bit flipped */
                }
            }
            LLVMFuzzerTestOneInput(input, len);
            runs++;
        }
    }
    printf("%ld mutated inputs\n", runs);
    return 0;
}
#endif
