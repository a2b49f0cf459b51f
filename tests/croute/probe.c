/* The launcher's C route alone, for the tests (tests/croute.py builds it, sanitised, against glibc):
 *
 *   probe EXE NAME [ARG...]           settle a call of NAME as the tree's executable EXE would,
 *                                     print the answer (or why it hands the call to Python)
 *   probe EXE --exec NAME [ARG...]    the same, then route_exec() it as the launcher does
 *
 * Output, one field a line: `handover\tWHY` (exit 3), or `binary\tPATH`, `mark\t0|1`,
 * `log\tPATH`, `line\tTEXT` (exit 0). */

#include "route.h"

#include <stdio.h>
#include <string.h>

extern char **environ;

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: probe EXE [--exec] NAME [ARG...]\n");
        return 2;
    }
    int run = strcmp(argv[2], "--exec") == 0;
    char **call = argv + 2 + run;
    int count = argc - 2 - run;
    static struct route_answer answer;
    route_settle(count, call, environ, argv[1], &answer);
    if (answer.handover) {
        printf("handover\t%s\n", answer.handover);
        return 3;
    }
    if (run) {
        route_exec(count, call, &answer);
        printf("exec failed\n");
        return 4;
    }
    printf("binary\t%s\nmark\t%d\nlog\t%s\nline\t%s\n", answer.binary, answer.mark_reentry, answer.log_path,
           answer.line);
    return 0;
}
