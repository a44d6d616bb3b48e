/*
 * orch-shim: what stays of a container's shim once its command runs (~0.2 MiB, not ~3.4).
 *
 * The Python shim (shim.py) sets the container up and drives the start; once the command
 * runs it execs this program in its place: the same pid (start.json, exit_fd), the same
 * child (the container's PID 1), the pipes inherited. This program then only
 *
 *   - copies the container's stdout and stderr into its log, in the CRI format, rotated by
 *     size, as logs.LogWriter does (logs.py: the format, and read_logs for the reader);
 *   - waits for PID 1 and writes the raw facts of the end to exit.json, atomically: the
 *     wait status, the cgroup's OOM kill count, the time. What they mean (exit code,
 *     reason) is decided in Python, where it is read (exits.py).
 *
 * It runs as host root but trusts nothing it reads from the container: the pipes' bytes
 * only go to the log, and the reaper's one status line (init: true) is parsed with bounds.
 *
 *   orch-shim --pid N --stdout FD --stderr FD [--reports FD] --log PATH
 *             --log-max-bytes N --log-max-files N --oom-file PATH --exit PATH
 *
 * --reports: the pipe of a reaper PID 1 (orch-init.c); its last line is
 * {"status": <the command's wait status>, "alone": true|false}.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE (16 * 1024) /* logs.MAX_LINE: a longer line is cut into P pieces */
#define CHUNK (16 * 1024)    /* one read from a pipe */
#define DRAIN_MS 2000        /* after PID 1 ended: every writer is dead; this bounds a surprise */

struct log {
    const char *path;
    int fd; /* -1: could not be opened; the output is drained and dropped */
    long long size, max_bytes;
    int max_files;
    size_t used;
    char out[2 * MAX_LINE];
};

struct stream {
    const char *name;
    int fd; /* -1 once at EOF */
    size_t len;
    char buf[MAX_LINE + CHUNK];
};

static void warn(const char *what, const char *path) {
    fprintf(stderr, "orch-shim: %s %s: %s\n", what, path ? path : "", strerror(errno));
}

static int log_open(struct log *log) {
    log->fd = open(log->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (log->fd < 0) {
        warn("open", log->path);
        return -1;
    }
    off_t end = lseek(log->fd, 0, SEEK_END);
    log->size = end > 0 ? end : 0;
    return 0;
}

static void log_flush(struct log *log) {
    size_t done = 0;
    while (log->fd >= 0 && done < log->used) {
        ssize_t n = write(log->fd, log->out + done, log->used - done);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) { /* e.g. ENOSPC: drop it, keep draining the pipes so the container runs on */
            warn("write", log->path);
            break;
        }
        done += (size_t)n;
    }
    log->size += (long long)log->used;
    log->used = 0;
}

/* X.log -> X.log.1 -> ... -> X.log.<max_files - 1>; a new, empty X.log. */
static void log_rotate(struct log *log) {
    char older[PATH_MAX], newer[PATH_MAX];
    if (log->fd >= 0)
        close(log->fd);
    if (log->max_files <= 1) {
        if (truncate(log->path, 0) < 0)
            warn("truncate", log->path);
    }
    for (int i = log->max_files - 1; i >= 1; i--) {
        snprintf(older, sizeof older, "%s.%d", log->path, i);
        if (i == 1)
            snprintf(newer, sizeof newer, "%s", log->path);
        else
            snprintf(newer, sizeof newer, "%s.%d", log->path, i - 1);
        if (rename(newer, older) < 0 && errno != ENOENT)
            warn("rename", newer);
    }
    log_open(log);
    log->size = 0;
}

/* One CRI line: "<time> <stream> <F|P> <text>\n". The file is rotated before a line that
 * would take it past max_bytes (never an empty file: a line longer than that still goes in). */
static void log_line(struct log *log, const char *stamp, const char *stream, char tag, const char *text,
                     size_t len) {
    size_t need = strlen(stamp) + strlen(stream) + len + 5;
    long long filled = log->size + (long long)log->used;
    if (filled > 0 && filled + (long long)need > log->max_bytes) {
        log_flush(log);
        log_rotate(log);
    }
    if (log->used + need > sizeof log->out)
        log_flush(log);
    int head = snprintf(log->out + log->used, sizeof log->out - log->used, "%s %s %c ", stamp, stream, tag);
    log->used += (size_t)head;
    memcpy(log->out + log->used, text, len);
    log->used += len;
    log->out[log->used++] = '\n';
}

static void now_stamp(char *out, size_t size) { /* RFC3339Nano, UTC: logs.format_time */
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, size, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, size - n, ".%09ldZ", ts.tv_nsec);
}

/* The lines complete in s->buf into the log (F), a line longer than MAX_LINE in P pieces;
 * at EOF the unterminated rest too. What is left (at most MAX_LINE bytes) waits for more. */
static void stream_lines(struct stream *s, struct log *log, int eof) {
    char stamp[48];
    size_t start = 0;
    now_stamp(stamp, sizeof stamp); /* one time for every line of one read, as LogWriter.write */
    for (;;) {
        size_t rest = s->len - start;
        char *nl = memchr(s->buf + start, '\n', rest);
        if (nl == NULL || (size_t)(nl - (s->buf + start)) > MAX_LINE) {
            if (rest <= MAX_LINE)
                break;
            log_line(log, stamp, s->name, 'P', s->buf + start, MAX_LINE);
            start += MAX_LINE;
            continue;
        }
        log_line(log, stamp, s->name, 'F', s->buf + start, (size_t)(nl - (s->buf + start)));
        start = (size_t)(nl - s->buf) + 1;
    }
    if (eof && start < s->len) {
        log_line(log, stamp, s->name, 'F', s->buf + start, s->len - start);
        start = s->len;
    }
    memmove(s->buf, s->buf + start, s->len - start);
    s->len -= start;
    log_flush(log);
}

/* One read from a readable pipe; at EOF (or an error) the stream ends. */
static void stream_read(struct stream *s, struct log *log) {
    ssize_t n = read(s->fd, s->buf + s->len, sizeof s->buf - s->len);
    if (n < 0 && (errno == EINTR || errno == EAGAIN))
        return;
    if (n > 0) {
        s->len += (size_t)n;
        stream_lines(s, log, 0);
        return;
    }
    stream_lines(s, log, 1);
    close(s->fd);
    s->fd = -1;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Copy both streams into the log until both are at EOF, or DRAIN_MS after PID 1 has ended. */
static void pump(struct stream *streams, int count, struct log *log, int pidfd) {
    long long deadline = -1;
    for (;;) {
        struct pollfd fds[3];
        struct stream *of[3];
        int n = 0;
        for (int i = 0; i < count; i++) {
            if (streams[i].fd >= 0) {
                of[n] = &streams[i];
                fds[n++] = (struct pollfd){.fd = streams[i].fd, .events = POLLIN};
            }
        }
        if (n == 0)
            return;
        int watch = deadline < 0 && pidfd >= 0;
        if (watch)
            fds[n] = (struct pollfd){.fd = pidfd, .events = POLLIN};
        int timeout = deadline < 0 ? -1 : (int)(deadline > now_ms() ? deadline - now_ms() : 0);
        int ready = poll(fds, (nfds_t)(n + watch), timeout);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            return; /* the deadline: what is still open is closed by our exit */
        if (watch && fds[n].revents)
            deadline = now_ms() + DRAIN_MS;
        for (int i = 0; i < n; i++) {
            if (fds[i].revents)
                stream_read(of[i], log);
        }
    }
}

/* The reaper's last line: {"status": N, "alone": true|false}. 0 if there was none (EOF). */
static int read_report(int fd, int *status, int *alone) {
    char line[256];
    size_t len = 0;
    while (len < sizeof line - 1) {
        ssize_t n = read(fd, line + len, sizeof line - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (memchr(line, '\n', len))
            break;
    }
    line[len] = '\0';
    char *at = strstr(line, "\"status\":");
    if (at == NULL)
        return 0;
    char *end;
    errno = 0;
    long value = strtol(at + strlen("\"status\":"), &end, 10);
    if (errno || end == at + strlen("\"status\":") || value < 0 || value > INT_MAX)
        return 0;
    *status = (int)value;
    *alone = strstr(line, "\"alone\": true") != NULL;
    return 1;
}

/* The container's wait status: the command's, as a reaper reports it, else PID 1's own.
 * A reaper left alone has closed the log pipes and is only exiting: not waited for (its
 * kernel teardown takes ~3-5 ms; Runtime.remove waits for it). */
static int end_status(pid_t child, int reports) {
    int reported = 0, alone = 0, status = 0;
    int has_report = reports >= 0 && read_report(reports, &reported, &alone);
    if (has_report && alone)
        return reported;
    while (waitpid(child, &status, 0) < 0) {
        if (errno != EINTR)
            return has_report ? reported : status;
    }
    if (has_report && !WIFSIGNALED(status))
        return reported;
    return status;
}

/* "oom_kill N" of memory.events (v2) or memory.oom_control (v1); 0 without one. */
static long long oom_kills(const char *path) {
    char text[4096];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    text[n > 0 ? n : 0] = '\0';
    for (char *line = text; line != NULL; line = strchr(line, '\n')) {
        line += *line == '\n';
        if (strncmp(line, "oom_kill ", 9) == 0)
            return strtoll(line + 9, NULL, 10);
    }
    return 0;
}

/* exit.json, all or nothing (a temporary file renamed over it), 0600 like every state file. */
static int write_exit(const char *path, int status, long long ooms) {
    char tmp[PATH_MAX];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return -1;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        warn("open", tmp);
        return -1;
    }
    double finished = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    int ok = dprintf(fd, "{\"wait_status\": %d, \"oom_kills\": %lld, \"finished_at\": %.6f}\n", status, ooms,
                     finished) > 0;
    if (close(fd) < 0 || !ok || rename(tmp, path) < 0) {
        warn("write", path);
        unlink(tmp);
        return -1;
    }
    return 0;
}

struct args {
    long long pid, out, err, reports, max_bytes, max_files;
    const char *log, *oom, *exit;
};

static int number(const char *text, long long low, long long high, long long *value) {
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || v < low || v > high) {
        fprintf(stderr, "orch-shim: bad number %s\n", text);
        return -1;
    }
    *value = v;
    return 0;
}

static int parse(int argc, char **argv, struct args *a) {
    static const struct option options[] = {
        {"pid", required_argument, NULL, 'p'},
        {"stdout", required_argument, NULL, 'o'},
        {"stderr", required_argument, NULL, 'e'},
        {"reports", required_argument, NULL, 'r'},
        {"log", required_argument, NULL, 'l'},
        {"log-max-bytes", required_argument, NULL, 'b'},
        {"log-max-files", required_argument, NULL, 'f'},
        {"oom-file", required_argument, NULL, 'm'},
        {"exit", required_argument, NULL, 'x'},
        {NULL, 0, NULL, 0},
    };
    int c, bad = 0;
    *a = (struct args){.pid = -1, .out = -1, .err = -1, .reports = -1, .max_bytes = 10 << 20, .max_files = 3};
    while (!bad && (c = getopt_long(argc, argv, "", options, NULL)) != -1) {
        switch (c) {
        case 'p': bad = number(optarg, 1, INT_MAX, &a->pid); break;
        case 'o': bad = number(optarg, 0, INT_MAX, &a->out); break;
        case 'e': bad = number(optarg, 0, INT_MAX, &a->err); break;
        case 'r': bad = number(optarg, -1, INT_MAX, &a->reports); break;
        case 'b': bad = number(optarg, 1, LLONG_MAX, &a->max_bytes); break;
        case 'f': bad = number(optarg, 1, 1000, &a->max_files); break;
        case 'l': a->log = optarg; break;
        case 'm': a->oom = optarg; break;
        case 'x': a->exit = optarg; break;
        default: bad = 1;
        }
    }
    return !bad && a->pid > 0 && a->out >= 0 && a->err >= 0 && a->log && a->oom && a->exit && optind == argc ? 0
                                                                                                             : -1;
}

int main(int argc, char **argv) {
    static struct log log;
    static struct stream streams[2];
    struct args a;
    if (parse(argc, argv, &a) < 0) {
        fprintf(stderr, "usage: orch-shim --pid N --stdout FD --stderr FD [--reports FD] --log PATH "
                        "--log-max-bytes N --log-max-files N --oom-file PATH --exit PATH\n");
        return 2;
    }
    signal(SIGCHLD, SIG_DFL); /* ignored, PID 1 would be reaped by the kernel: no wait status */
    log = (struct log){.path = a.log, .max_bytes = a.max_bytes, .max_files = (int)a.max_files};
    log_open(&log);
    streams[0].name = "stdout", streams[0].fd = (int)a.out;
    streams[1].name = "stderr", streams[1].fd = (int)a.err;
    int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)a.pid, 0);
    if (pidfd < 0)
        warn("pidfd_open", NULL); /* then only the pipes' EOF ends the pump */
    pump(streams, 2, &log, pidfd);
    int status = end_status((pid_t)a.pid, (int)a.reports);
    return write_exit(a.exit, status, oom_kills(a.oom)) == 0 ? 0 : 1;
}
