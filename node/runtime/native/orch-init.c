/*
 * orch-init: PID 1 of a container that asks for one (manifest `init: true`), as docker-init
 * (tini) is for `docker run --init`.
 *
 *   init REPORT_FD COMMAND [ARG...]
 *
 * The container's Python PID 1 execs this as its very last step (shim.py), after every
 * isolation step: namespaces, rlimits, ids, capabilities, no_new_privs, the seccomp filter.
 * It is exec'd from a sealed memfd (native.py): the container has no such file, and nobody
 * can write to the one it runs from. Statically linked: the container's own libc is none of
 * its business. It then
 *
 *   - starts the command (PATH searched as os.execvpe does: the first error other than
 *     ENOENT/ENOTDIR wins) with default signal dispositions and nothing blocked; from its
 *     first instruction it sees in /proc/1/fd only stdio and REPORT_FD, never a fd of ours;
 *   - forwards HUP INT QUIT TERM USR1 USR2 WINCH CONT to it (init.FORWARDED_SIGNALS);
 *   - reaps every process re-parented to it;
 *   - when the command has ended, reaps what has ended too and, if nothing else is left in
 *     the pid namespace, closes its stdio (the log pipes then reach EOF at once);
 *   - writes {"status": <the command's wait status>, "alone": true|false} to REPORT_FD and
 *     exits; the kernel then kills whatever is left of the pid namespace.
 *
 * Before that, on REPORT_FD: "{}" once the command was exec'd, or {"stage": "exec",
 * "errno": N} if it could not be (the shim turns that into exit code 127/126 and a message).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static const int forwarded[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};
#define FORWARDED (sizeof forwarded / sizeof forwarded[0])

struct command {
    char **argv;
    int *failed; /* shared with PID 1: the exec error, 0 while none */
};

static void report(int fd, const char *line) {
    size_t len = strlen(line), done = 0;
    while (done < len) {
        ssize_t n = write(fd, line + done, len - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return; /* the shim is gone: nobody to tell */
        done += (size_t)n;
    }
}

/* execv along $PATH, as os.execvpe does; returns the errno that counts. */
static int exec_path(const char *file, char **argv) {
    char path[PATH_MAX];
    const char *dirs = getenv("PATH");
    int first = 0, last = ENOENT;
    if (strchr(file, '/') != NULL) {
        execv(file, argv);
        return errno;
    }
    for (const char *dir = dirs ? dirs : "/bin:/usr/bin"; dir != NULL;) {
        const char *end = strchrnul(dir, ':');
        int n = end == dir ? snprintf(path, sizeof path, "%s", file)
                           : snprintf(path, sizeof path, "%.*s/%s", (int)(end - dir), dir, file);
        if (n > 0 && (size_t)n < sizeof path) {
            execv(path, argv);
            last = errno;
        } else {
            last = ENAMETOOLONG;
        }
        if (first == 0 && last != ENOENT && last != ENOTDIR)
            first = last;
        dir = *end ? end + 1 : NULL;
    }
    return first ? first : last;
}

/* The command's process: default dispositions, nothing blocked, then exec. Only if no exec
 * succeeds does it write its error to `failed`, a page shared with PID 1. */
static int run_command(void *arg) {
    const struct command *cmd = arg;
    /* Raw rt_sigaction: the libc refuses to touch its own signals (32, 33), and one left ignored
     * by whoever started us would survive exec. A zeroed kernel sigaction is SIG_DFL. */
    unsigned long dfl[4] = {0}, none = 0;
    for (int sig = 1; sig <= 64; sig++)
        if (sig != SIGKILL && sig != SIGSTOP)
            syscall(SYS_rt_sigaction, sig, dfl, NULL, sizeof none);
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, NULL, sizeof none);
    int err = exec_path(cmd->argv[0], cmd->argv);
    *cmd->failed = err ? err : EIO; /* never 0: that reads as exec'd */
    _exit(127);
}

/* Start the command: its pid, or -errno if it could not be started.
 *
 * No fd of ours may exist once the command runs: it lists /proc/1/fd (an exec-status pipe
 * closed only after the exec was seen raced the command's first instructions). So a fork
 * with CLONE_VFORK, not CLONE_VM (a copy of our memory, its own stack): we sleep until the
 * command's process has exec'd or exited, and its exec error comes back through a shared
 * anonymous page, which is no fd. */
static pid_t start(char **argv) {
    static char stack[64 << 10] __attribute__((aligned(16))); /* the child's copy of it */
    int *failed = mmap(NULL, sizeof *failed, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (failed == MAP_FAILED)
        return -errno;
    *failed = 0;
    struct command cmd = {argv, failed};
    pid_t child = clone(run_command, stack + sizeof stack, CLONE_VFORK | SIGCHLD, &cmd);
    int err = child < 0 ? errno : *failed;
    munmap(failed, sizeof *failed);
    if (err == 0)
        return child;
    if (child > 0)
        waitpid(child, NULL, 0);
    return -err;
}

/* Reap what has ended; 1 if no other process is left in the pid namespace (each one
 * descends from PID 1, and orphans are re-parented to it). */
static int alone(void) {
    pid_t pid;
    while ((pid = waitpid(-1, NULL, WNOHANG)) > 0) {
    }
    return pid < 0 && errno == ECHILD;
}

/* Forward signals and reap until the command has ended; its wait status. */
static int supervise(pid_t child, const sigset_t *wanted) {
    for (;;) {
        siginfo_t info;
        int sig = sigwaitinfo(wanted, &info);
        if (sig < 0)
            continue; /* EINTR */
        if (sig != SIGCHLD) {
            kill(child, sig);
            continue;
        }
        for (;;) {
            int status;
            pid_t pid = waitpid(-1, &status, WNOHANG);
            if (pid == child)
                return status;
            if (pid <= 0)
                break;
        }
    }
}

int main(int argc, char **argv) {
    /* First: this process runs the container's code as the container's uid and capabilities.
     * Not dumpable, its /proc/1/fd (the report pipe to the shim) and memory need
     * CAP_SYS_PTRACE over the host's user namespace. The command's own exec resets it. */
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    char *end;
    long fd = argc >= 3 ? strtol(argv[1], &end, 10) : -1;
    if (fd < 3 || fd > INT_MAX || *end != '\0') {
        fprintf(stderr, "usage: init REPORT_FD COMMAND [ARG...]\n");
        return 2;
    }
    int to_shim = (int)fd;
    fcntl(to_shim, F_SETFD, FD_CLOEXEC); /* never the command's */

    /* Blocked before the fork, so a signal sent meanwhile waits for sigwaitinfo; a blocked
     * but ignored signal would be dropped, so they get their default action first. */
    sigset_t wanted;
    sigemptyset(&wanted);
    sigaddset(&wanted, SIGCHLD);
    signal(SIGCHLD, SIG_DFL); /* ignored, the kernel would reap the command: no wait status */
    for (size_t i = 0; i < FORWARDED; i++) {
        sigaddset(&wanted, forwarded[i]);
        signal(forwarded[i], SIG_DFL);
    }
    sigprocmask(SIG_BLOCK, &wanted, NULL);

    pid_t child = start(argv + 2);
    char line[64];
    if (child < 0) {
        snprintf(line, sizeof line, "{\"stage\": \"exec\", \"errno\": %d}\n", (int)-child);
        report(to_shim, line);
        return 1;
    }
    report(to_shim, "{}\n");

    int status = supervise(child, &wanted);
    int nobody_left = alone();
    if (nobody_left) {
        /* The kernel releases an exiting process's files only after its namespaces are torn
         * down (~3-5 ms): closed now, the log pipes reach EOF at once. Nothing else is left
         * to write to them. */
        close(0);
        close(1);
        close(2);
    }
    snprintf(line, sizeof line, "{\"status\": %d, \"alone\": %s}\n", status, nobody_left ? "true" : "false");
    report(to_shim, line);
    return 0;
}
