/* The launcher's C route: the settled answers of a call, before Python starts (route.c). */

#ifndef ROUTE_H
#define ROUTE_H

#include <limits.h>
#include <stddef.h>

#define ROUTE_TEXT 4096 /* a reason, a log line: an entry holds at most 4096 bytes (MAX_ENTRY) */

struct route_answer {
    const char *handover;   /* NULL: answered below; else why Python answers this call */
    char binary[PATH_MAX];  /* what to execute */
    char exe[PATH_MAX];     /* the tree's executable: the re-entry mark's value */
    int mark_reentry;       /* set REENTRY_MARKER=exe first (an alias that may be a script) */
    char log_path[PATH_MAX];/* "" when no log file is set */
    char line[ROUTE_TEXT];  /* the call's line (shim.log.format_line) */
    int logged;             /* route_exec wrote the line to the log file (then its execv failed) */
};

/* The answer to a call of argv[0]'s basename with environment envp by the executable exe
 * (its real path), or in out->handover why Python must answer it. Reads only; never prints. */
void route_settle(int argc, char **argv, char **envp, const char *exe, struct route_answer *out);

/* The same for the tool `name` (explain asks it for the name it reports on). */
void route_settle_name(const char *name, char **envp, const char *exe, struct route_answer *out);

/* The log line and the environment Python's exec_real gives, then execv with the caller's signal
 * dispositions and mask. Returns only when execv failed, with the environment as it was and
 * answer->logged set where the line was written. */
void route_exec(int argc, char **argv, struct route_answer *answer);

/* Whether argv[0]'s last component is one of the six names (settled.h's SHIM_NAMES). */
int route_is_shim_name(int argc, char **argv);

/* One write(2) of the shim's own, whole (0) or failed (-1), never SIGXFSZ's death: the C route's
 * log line, and Python's writes in the frozen tree (shim.writes). */
int route_write_whole(int fd, const char *data, size_t len);

/* The parsers of untrusted bytes, for the fuzz harness (tests/croute/fuzz.c). Each returns 0
 * when it parsed the bytes as Python would, -1 when Python must read them. */
int route_parse_entry(const char *data, size_t len, int *backend, int *step, char *reason, size_t reason_size);
int route_parse_config(char *data, size_t len, const char **values); /* values[SETTING_COUNT] */
int route_parse_capeff(const char *data, size_t len, int *net_admin);
int route_modules_list(const char *data, size_t len, const char *module);
int route_parse_record(char *data, size_t len, char (*alias)[PATH_MAX]); /* alias[SHIM_NAME_COUNT]; 1: refused */

#endif
