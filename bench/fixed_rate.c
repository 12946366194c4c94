/*
 * fixed_rate: an open-loop HTTP/1.1 load generator for loopback benchmarks.
 *
 * It offers a fixed request rate, whatever the server does, and measures each request's latency
 * from the time the schedule gave it, not from the time it could actually be sent. A closed-loop
 * client such as wrk sends the next request only when an answer came back, so a slow moment of
 * the server (or of the client) delays the requests that would have been measured during it and
 * they are never counted ("coordinated omission"); here a request that had to wait is charged
 * for the wait.
 *
 *   fixed_rate --host 127.0.0.1 --port 8080 --requests FILE --rate 40000 --duration 10 \
 *              --connections 64 [--warmup 2] [--timeout 10] [--late-ms 1] [--latencies OUT]
 *
 * Schedule: request k (k = 0, 1, ...) is due at start + k / rate and goes out on connection
 * k mod connections, so each connection has its own evenly spaced schedule (one request every
 * connections / rate seconds). A connection has at most one request in flight (no pipelining):
 * if its previous answer has not arrived when a request is due, the request goes out the moment
 * the answer arrives, and its latency still counts from when it was due. Requests due in the
 * first --warmup seconds are sent but their latencies are not recorded.
 *
 * Requests: FILE holds request heads (GET, no body), each ending with an empty line; request k
 * uses head k mod count, with the request number written, zero-padded, over the placeholder
 * "#########" (9 characters, exactly once in every head), so no two requests are byte-identical.
 *
 * Answers: status line and fields are read; the body by Content-Length, chunked coding, or up to
 * the close when neither is given. Connections are kept alive and reopened when the server
 * closes them. One JSON object goes to stdout: counts, errors by kind, offered and achieved rate,
 * latency percentiles (every latency is kept and sorted at the end), how late requests went out
 * (send lag) and how many were later than --late-ms, and per second of the measured schedule the
 * requests sent, the slowest answer and the late sends (to tell a stall from a slow run).
 *
 * Closed loop (--closed instead of --rate): each connection sends its next request the moment
 * the previous answer is in, as wrk does, for --warmup + --duration seconds; latency counts from
 * when the request was written; requests are numbered in the order they are sent. It measures a
 * server's capacity with as little of the client's own work per request as this loop needs (no
 * schedule, no timer, no script): achieved_rate counts the answers completed within the measured
 * --duration seconds. The schedule's fields (late sends, send lag) are zero or null there, and
 * --latencies is refused (its record numbers are due times).
 *
 * With --latencies OUT, every measured answer is also written to OUT as one record of two
 * little-endian 32-bit fields: the request's number counted from the first measured one
 * (uint32; its due time is that number / rate after the measured schedule began) and its
 * latency in microseconds (float32), in the order the answers came. Runs can then be pooled
 * into one distribution, and slow answers placed in time.
 *
 * Loopback only: the host must be an address in 127.0.0.0/8 or ::1; anything else is refused.
 * Single-threaded, epoll; between events it sleeps until the next request is due (a timerfd
 * armed at that time).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define MARK "#########"
#define MARK_LEN 9
#define MAX_COUNTER 999999999ULL /* the largest number the placeholder holds */
#define MAX_DURATION_S 120.0
#define MAX_WARMUP_S 60.0
#define MAX_RATE 1000000.0
#define MAX_CONNECTIONS 4096
#define MAX_TEMPLATES 1000000
#define MAX_TEMPLATE 8192 /* bytes of one request head */
#define MAX_HEAD 16384    /* bytes of one response head */
#define MAX_LINE 256      /* a chunk-size line kept for parsing */
#define READ_BUF (256 * 1024)
#define CHECK_EVERY_NS 20000000LL /* timeouts and reconnects looked at this often */
#define RETRY_NS 10000000LL       /* a failed connect is retried after this */
#define CONNECT_WAIT_NS 5000000000LL

enum conn_state { C_DOWN, C_CONNECTING, C_IDLE, C_BUSY };
enum read_state { R_HEAD, R_BODY_LEN, R_BODY_EOF, R_CHUNK_SIZE, R_CHUNK_DATA, R_CHUNK_END,
                  R_TRAILERS };
enum error_kind { E_CONNECT, E_READ, E_WRITE, E_CLOSED, E_TIMEOUT, E_PARSE, E_UNEXPECTED,
                  E_UNSENT, E_KINDS };
static const char *const ERROR_NAMES[E_KINDS] = {
    "connect", "read", "write", "closed_mid_response", "timeout", "parse", "unexpected_bytes",
    "unsent_at_end"};

struct conn {
    int fd;
    enum conn_state state;
    uint64_t next_k;     /* the next request this connection is to send */
    uint64_t flight_k;   /* the request in flight (C_BUSY) */
    int64_t sent_ns;     /* when it was written */
    int64_t flight_due;  /* when it was due (closed loop: when it was written) */
    int flight_measured; /* its latency is recorded */
    int64_t free_ns;     /* since when this connection could send (answer in, or connected) */
    int64_t retry_ns;    /* C_DOWN: when to connect again */
    char *wbuf;          /* the request being written */
    size_t wlen, woff;
    int want_out;        /* EPOLLOUT registered */
    /* the answer being read */
    enum read_state rstate;
    char *head;
    size_t hlen;
    uint64_t left;       /* body or chunk bytes still to come */
    char line[MAX_LINE];
    size_t llen;         /* bytes of the current line (counted past MAX_LINE, kept up to it) */
    int status;
    int close_after;
};

struct template {
    const char *bytes;
    size_t len;
    size_t mark; /* offset of the placeholder */
};

/* ------------------------------------------------------------------ settings and state */

static const char *opt_host;
static int opt_port;
static const char *opt_requests;
static const char *opt_latencies; /* --latencies OUT, or NULL */
static FILE *latencies_out;
static double opt_rate, opt_duration = -1, opt_warmup, opt_timeout = 10.0, opt_late_ms = 1.0;
static int opt_connections;
static int opt_closed; /* --closed: closed loop, no schedule */

static struct template *templates;
static size_t template_count;
static struct conn *conns;
static int epfd, tfd;
static struct sockaddr_storage target;
static socklen_t target_len;

static int64_t t0;           /* when request 0 is due */
static double period_ns;     /* 1e9 / rate */
static uint64_t total;       /* requests scheduled, warm-up included */
static uint64_t first_measured; /* requests from here on are measured */
static uint64_t due_k;       /* every request before this one is due and dispatched */
static int64_t armed_ns = -1;
static int64_t end_ns;       /* closed loop: no request is written from here on */
static int sending;          /* closed loop: between the start and end_ns */
static uint64_t sent_total;  /* closed loop: requests written, warm-up included */
static uint64_t answered_in_window; /* closed loop: answers completed in the measured seconds */

static uint64_t errors[E_KINDS];
static uint64_t sent_warmup, sent_measured, answered_warmup, answered_measured;
static uint64_t status_2xx, status_3xx, status_4xx, status_5xx, status_other;
static uint64_t late_total, late_busy, late_client, reconnects, idle_closes, bytes_in;
static int64_t last_answer_ns;
static float *latencies_us, *lags_us; /* measured requests only */
static uint32_t *latency_ks;          /* with --latencies: each latency's request number */
static uint64_t n_latencies, n_lags, capacity;
static int64_t measure_from;          /* when the first measured request is due */
static size_t seconds;                /* of the measured schedule, a partial last one included */
static uint64_t *sec_due, *sec_late;  /* per second of due time: sent, sent late */
static float *sec_max_us;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t due_ns(uint64_t k) { return t0 + (int64_t)llround((double)k * period_ns); }

/* The second of the measured schedule that a time (a request's due time) falls in. */
static size_t second_of(int64_t due) {
    int64_t i = (due - measure_from) / 1000000000LL;
    return i < 0 ? 0 : (size_t)i < seconds ? (size_t)i : seconds - 1;
}

__attribute__((format(printf, 1, 2), noreturn)) static void die(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fprintf(stderr, "fixed_rate: ");
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    exit(2);
}

static void usage(void) {
    fprintf(stderr,
            "usage: fixed_rate --host ADDR --port N --requests FILE (--rate REQ_PER_S | --closed)\n"
            "                  --duration S --connections N [--warmup S] [--timeout S]"
            " [--late-ms MS]\n"
            "                  [--latencies OUT]\n"
            "  ADDR must be a loopback address (127.0.0.0/8 or ::1); duration <= %.0f s\n",
            MAX_DURATION_S);
    exit(2);
}

/* ------------------------------------------------------------------ arguments */

static double number(const char *text, const char *name) {
    char *end;
    errno = 0;
    double v = strtod(text, &end);
    if (errno || end == text || *end || !isfinite(v)) die("%s: not a number", name);
    return v;
}

static void parse_args(int argc, char **argv) {
    static const struct option longs[] = {
        {"host", required_argument, 0, 'h'},     {"port", required_argument, 0, 'p'},
        {"requests", required_argument, 0, 'r'}, {"rate", required_argument, 0, 'R'},
        {"duration", required_argument, 0, 'd'}, {"connections", required_argument, 0, 'c'},
        {"warmup", required_argument, 0, 'w'},   {"timeout", required_argument, 0, 't'},
        {"late-ms", required_argument, 0, 'l'},  {"latencies", required_argument, 0, 'L'},
        {"closed", no_argument, 0, 'C'},         {0, 0, 0, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (ch) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = (int)number(optarg, "--port"); break;
        case 'r': opt_requests = optarg; break;
        case 'R': opt_rate = number(optarg, "--rate"); break;
        case 'd': opt_duration = number(optarg, "--duration"); break;
        case 'c': opt_connections = (int)number(optarg, "--connections"); break;
        case 'w': opt_warmup = number(optarg, "--warmup"); break;
        case 't': opt_timeout = number(optarg, "--timeout"); break;
        case 'l': opt_late_ms = number(optarg, "--late-ms"); break;
        case 'L': opt_latencies = optarg; break;
        case 'C': opt_closed = 1; break;
        default: usage();
        }
    }
    if (optind != argc || !opt_host || !opt_requests || opt_port <= 0 ||
        (opt_closed ? opt_rate != 0 : opt_rate <= 0) || opt_duration <= 0 || opt_connections <= 0)
        usage();
    if (opt_closed && opt_latencies) die("--latencies needs a schedule: not with --closed");
    if (opt_port > 65535) die("--port must be 1-65535");
    if (opt_rate > MAX_RATE) die("--rate is at most 1,000,000 requests/s");
    if (opt_duration > MAX_DURATION_S) die("--duration is at most 120 s");
    if (opt_warmup < 0 || opt_warmup > MAX_WARMUP_S) die("--warmup is 0-60 s");
    if (opt_timeout <= 0 || opt_timeout > 60) die("--timeout is 0-60 s");
    if (opt_connections > MAX_CONNECTIONS) die("at most 4096 connections");
    if (opt_late_ms < 0) die("--late-ms must be >= 0");
}

/* Only loopback: an IPv4 address in 127.0.0.0/8 or the IPv6 address ::1. */
static void resolve_loopback(const char *host, int port) {
    memset(&target, 0, sizeof target);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&target;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&target;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        if ((ntohl(v4->sin_addr.s_addr) >> 24) != 127)
            die("refusing non-loopback host %s: only 127.0.0.0/8 and ::1 (this client is for "
                "loopback benchmarks)", host);
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        target_len = sizeof *v4;
    } else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        if (!IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr))
            die("refusing non-loopback host %s: only 127.0.0.0/8 and ::1 (this client is for "
                "loopback benchmarks)", host);
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        target_len = sizeof *v6;
    } else {
        die("refusing host %s: not an IP address (only 127.0.0.0/8 and ::1 are allowed)", host);
    }
}

/* The request heads: each ends with an empty line and holds the placeholder exactly once. */
static void load_templates(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the request file %s", path);
    if (fseek(f, 0, SEEK_END) != 0) die("cannot read %s", path);
    long size = ftell(f);
    if (size <= 0) die("the request file %s is empty", path);
    rewind(f);
    char *data = malloc((size_t)size + 1);
    if (!data || fread(data, 1, (size_t)size, f) != (size_t)size) die("cannot read %s", path);
    fclose(f);
    data[size] = 0;
    size_t cap = 1024;
    templates = malloc(cap * sizeof *templates);
    const char *p = data, *end = data + size;
    while (p < end) {
        const char *stop = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!stop) die("%s: a request head does not end with an empty line", path);
        size_t len = (size_t)(stop - p) + 4;
        if (len > MAX_TEMPLATE) die("%s: a request head is longer than 8192 bytes", path);
        if (len < 4 || memcmp(p, "GET ", 4) != 0)
            die("%s: every request must be a GET without a body", path);
        const char *mark = memmem(p, len, MARK, MARK_LEN);
        if (!mark || memmem(mark + 1, len - (size_t)(mark + 1 - p), MARK, MARK_LEN))
            die("%s: every head needs the placeholder ######### exactly once", path);
        if (template_count == cap) {
            cap *= 2;
            templates = realloc(templates, cap * sizeof *templates);
        }
        if (!templates) die("out of memory");
        templates[template_count++] = (struct template){p, len, (size_t)(mark - p)};
        if (template_count > MAX_TEMPLATES) die("%s: more than 1,000,000 heads", path);
        p = stop + 4;
    }
}

/* ------------------------------------------------------------------ connections */

static void watch(struct conn *c, int out) {
    struct epoll_event ev = {.events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    c->want_out = out;
}

static void reset_answer(struct conn *c) {
    c->rstate = R_HEAD;
    c->hlen = 0;
    c->left = 0;
    c->llen = 0;
    c->status = 0;
    c->close_after = 0;
}

/* Open the connection (non-blocking); C_CONNECTING until writable. */
static void open_conn(struct conn *c, int64_t now) {
    int fd = socket(target.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket: %s", strerror(errno));
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    reset_answer(c);
    if (connect(fd, (struct sockaddr *)&target, target_len) != 0 && errno != EINPROGRESS) {
        errors[E_CONNECT]++;
        close(fd);
        c->fd = -1;
        c->state = C_DOWN;
        c->retry_ns = now + RETRY_NS;
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) die("epoll_ctl: %s", strerror(errno));
    c->want_out = 1;
    c->state = C_CONNECTING;
}

/* Close the connection; a request in flight is lost and counted under *kind*. */
static void drop_conn(struct conn *c, enum error_kind kind, int64_t now, int count_error) {
    if (c->state == C_BUSY && count_error) errors[kind]++;
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_DOWN;
    c->retry_ns = kind == E_CONNECT ? now + RETRY_NS : now;
    c->free_ns = now;
}

static void send_next(struct conn *c, int64_t now);

/* The connection can send again: send its next request if that one is already due. */
static void now_free(struct conn *c, int64_t now) {
    c->state = C_IDLE;
    c->free_ns = now;
    if (opt_closed ? sending && now < end_ns : c->next_k < total && due_ns(c->next_k) <= now)
        send_next(c, now);
}

static void flush_write(struct conn *c, int64_t now) {
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n > 0) {
            c->woff += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!c->want_out) watch(c, 1);
            return;
        } else {
            drop_conn(c, E_WRITE, now, 1);
            return;
        }
    }
    if (c->want_out) watch(c, 0);
}

/* Closed loop: keep a measured latency, growing the arrays as needed (no schedule to size them). */
static void grow_latencies(void) {
    capacity = capacity ? capacity * 2 : 1u << 20;
    latencies_us = realloc(latencies_us, capacity * sizeof *latencies_us);
    if (!latencies_us) die("out of memory");
}

static void send_next(struct conn *c, int64_t now) {
    uint64_t k = opt_closed ? sent_total++ : c->next_k;
    const struct template *t = &templates[k % template_count];
    memcpy(c->wbuf, t->bytes, t->len);
    uint64_t v = k;
    for (int i = MARK_LEN - 1; i >= 0; i--) {
        c->wbuf[t->mark + (size_t)i] = (char)('0' + v % 10);
        v /= 10;
    }
    c->wlen = t->len;
    c->woff = 0;
    int64_t due = opt_closed ? now : due_ns(k);
    int64_t lag = now - due;
    int measured = opt_closed ? now >= measure_from : k >= first_measured;
    if (measured && opt_closed) {
        sent_measured++;
        sec_due[second_of(due)]++;
    } else if (measured) {
        sent_measured++;
        if (n_lags < capacity) lags_us[n_lags++] = (float)lag / 1000.0f;
        sec_due[second_of(due)]++;
        if ((double)lag > opt_late_ms * 1e6) {
            late_total++;
            sec_late[second_of(due)]++;
            /* busy: the connection was still waiting for an answer (or reconnecting) when the
             * request was due; client: it was free, this loop got to it late */
            if (c->free_ns > due) late_busy++;
            else late_client++;
        }
    } else {
        sent_warmup++;
    }
    c->flight_k = k;
    c->flight_due = due;
    c->flight_measured = measured;
    c->next_k = k + (uint64_t)opt_connections;
    c->sent_ns = now;
    c->state = C_BUSY;
    reset_answer(c);
    flush_write(c, now);
}

/* ------------------------------------------------------------------ answers */

static void answered(struct conn *c, int64_t now) {
    uint64_t k = c->flight_k;
    int s = c->status;
    if (s >= 200 && s < 300) status_2xx++;
    else if (s >= 300 && s < 400) status_3xx++;
    else if (s >= 400 && s < 500) status_4xx++;
    else if (s >= 500 && s < 600) status_5xx++;
    else status_other++;
    if (opt_closed && now >= measure_from && now < end_ns) answered_in_window++;
    if (c->flight_measured) {
        answered_measured++;
        last_answer_ns = now;
        float us = (float)(now - c->flight_due) / 1000.0f;
        if (opt_closed && n_latencies == capacity) grow_latencies();
        if (n_latencies < capacity) {
            if (latency_ks) latency_ks[n_latencies] = (uint32_t)(k - first_measured);
            latencies_us[n_latencies++] = us;
        }
        size_t sec = second_of(c->flight_due);
        if (us > sec_max_us[sec]) sec_max_us[sec] = us;
    } else {
        answered_warmup++;
    }
    c->state = C_IDLE; /* the next request goes out from on_readable (after_answer) */
    c->free_ns = now;
}

/* After a complete answer (and no stray bytes behind it): reconnect if the server said it
 * closes, else send this connection's next request if it is due already. */
static void after_answer(struct conn *c, int64_t now) {
    if (c->close_after) {
        drop_conn(c, E_CLOSED, now, 0);
        reconnects++;
        open_conn(c, now);
        return;
    }
    now_free(c, now);
}

static int field_is(const char *line, size_t len, const char *name) {
    size_t n = strlen(name);
    return len > n && line[n] == ':' && strncasecmp(line, name, n) == 0;
}

/* Whether the comma-separated value holds *token* (case-insensitively). */
static int has_token(const char *value, size_t len, const char *token) {
    size_t n = strlen(token);
    for (size_t i = 0; i + n <= len; i++) {
        if (strncasecmp(value + i, token, n) == 0) {
            int before = i == 0 || value[i - 1] == ',' || value[i - 1] == ' ' || value[i - 1] == '\t';
            size_t j = i + n;
            int after = j == len || value[j] == ',' || value[j] == ' ' || value[j] == '\t';
            if (before && after) return 1;
        }
    }
    return 0;
}

/* The head is complete (c->head, c->hlen bytes, ending with an empty line): read the status and
 * the framing. Returns 0, or -1 on a malformed head. */
static int parse_head(struct conn *c) {
    const char *h = c->head;
    if (c->hlen < 16 || memcmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ') return -1;
    int status = 0;
    for (int i = 9; i < 12; i++) {
        if (h[i] < '0' || h[i] > '9') return -1;
        status = status * 10 + (h[i] - '0');
    }
    c->status = status;
    int http10 = h[7] == '0';
    int chunked = 0, keep_alive = 0, have_length = 0;
    uint64_t length = 0;
    const char *p = (const char *)memchr(h, '\n', c->hlen) + 1, *end = h + c->hlen;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol) return -1;
        size_t len = (size_t)(eol - p);
        if (len && p[len - 1] == '\r') len--;
        if (len == 0) break;
        const char *colon = memchr(p, ':', len);
        const char *v = colon ? colon + 1 : p + len;
        while (v < p + len && (*v == ' ' || *v == '\t')) v++;
        size_t vlen = (size_t)(p + len - v);
        while (vlen && (v[vlen - 1] == ' ' || v[vlen - 1] == '\t')) vlen--;
        if (field_is(p, len, "content-length")) {
            if (vlen == 0 || vlen > 18) return -1;
            uint64_t n = 0;
            for (size_t i = 0; i < vlen; i++) {
                if (v[i] < '0' || v[i] > '9') return -1;
                n = n * 10 + (uint64_t)(v[i] - '0');
            }
            if (have_length && n != length) return -1;
            length = n;
            have_length = 1;
        } else if (field_is(p, len, "transfer-encoding")) {
            chunked = vlen >= 7 && strncasecmp(v + vlen - 7, "chunked", 7) == 0;
            if (!chunked) return -1; /* another coding last: the length is unknowable */
        } else if (field_is(p, len, "connection")) {
            if (has_token(v, vlen, "close")) c->close_after = 1;
            if (has_token(v, vlen, "keep-alive")) keep_alive = 1;
        }
        p = eol + 1;
    }
    if (http10 && !keep_alive) c->close_after = 1;
    if (status < 200) {
        if (status == 101) return -1;
        c->rstate = R_HEAD; /* an interim answer: the real one follows */
        c->hlen = 0;
        return 1;
    }
    if (status == 204 || status == 304) {
        c->left = 0;
        c->rstate = R_BODY_LEN;
    } else if (chunked) {
        c->rstate = R_CHUNK_SIZE;
        c->llen = 0;
    } else if (have_length) {
        c->left = length;
        c->rstate = R_BODY_LEN;
    } else {
        c->rstate = R_BODY_EOF;
        c->close_after = 1;
    }
    return 0;
}

/* A line of the chunked body (size line, the CRLF after data, trailers): returns the bytes of
 * *data* used, and sets *done when the line ended. */
static size_t take_line(struct conn *c, const char *data, size_t len, int *done) {
    const char *nl = memchr(data, '\n', len);
    size_t used = nl ? (size_t)(nl - data) + 1 : len;
    for (size_t i = 0; i < used; i++) {
        if (data[i] == '\n') break;
        if (c->llen < MAX_LINE - 1) c->line[c->llen] = data[i];
        c->llen++;
    }
    *done = nl != NULL;
    return used;
}

/* Bytes of a body or a chunk counted off what is left of it: how many of `len` it takes. */
static size_t take_body(struct conn *c, size_t len) {
    size_t take = len < c->left ? len : (size_t)c->left;
    c->left -= take;
    return take;
}

/* Feed bytes of the answer in flight. Returns 0, or the error kind that ended the connection. */
static int feed(struct conn *c, const char *data, size_t len, int64_t now) {
    while (len > 0) {
        if (c->state != C_BUSY) return E_UNEXPECTED; /* bytes after a complete answer */
        switch (c->rstate) {
        case R_HEAD: {
            size_t room = MAX_HEAD - c->hlen, take = len < room ? len : room;
            size_t from = c->hlen >= 3 ? c->hlen - 3 : 0;
            memcpy(c->head + c->hlen, data, take);
            c->hlen += take;
            char *stop = memmem(c->head + from, c->hlen - from, "\r\n\r\n", 4);
            if (!stop) {
                if (c->hlen >= MAX_HEAD) return E_PARSE;
                return 0;
            }
            size_t head_len = (size_t)(stop - c->head) + 4;
            size_t used = take - (c->hlen - head_len);
            c->hlen = head_len;
            data += used;
            len -= used;
            int r = parse_head(c);
            if (r < 0) return E_PARSE;
            if (r == 0 && c->rstate == R_BODY_LEN && c->left == 0) answered(c, now);
            break;
        }
        case R_BODY_LEN: {
            size_t used = take_body(c, len);
            data += used;
            len -= used;
            if (c->left == 0) answered(c, now);
            break;
        }
        case R_BODY_EOF:
            return 0; /* everything up to the close is body */
        case R_CHUNK_SIZE: {
            int done;
            size_t used = take_line(c, data, len, &done);
            data += used;
            len -= used;
            if (!done) break;
            if (c->llen >= MAX_LINE) return E_PARSE;
            c->line[c->llen] = 0;
            char *endp;
            errno = 0;
            unsigned long long size = strtoull(c->line, &endp, 16);
            if (endp == c->line || errno) return E_PARSE;
            c->llen = 0;
            c->left = size;
            c->rstate = size ? R_CHUNK_DATA : R_TRAILERS;
            break;
        }
        case R_CHUNK_DATA: {
            size_t used = take_body(c, len);
            data += used;
            len -= used;
            if (c->left == 0) c->rstate = R_CHUNK_END;
            break;
        }
        case R_CHUNK_END:
        case R_TRAILERS: {
            int done;
            size_t used = take_line(c, data, len, &done);
            data += used;
            len -= used;
            if (!done) break;
            size_t line_len = c->llen;
            if (line_len && line_len < MAX_LINE && c->line[line_len - 1] == '\r') line_len--;
            c->llen = 0;
            if (c->rstate == R_CHUNK_END) {
                if (line_len) return E_PARSE;
                c->rstate = R_CHUNK_SIZE;
            } else if (line_len == 0) {
                answered(c, now);
            }
            break;
        }
        }
    }
    return 0;
}

static char readbuf[READ_BUF];

static void on_readable(struct conn *c, int64_t now) {
    ssize_t n = recv(c->fd, readbuf, sizeof readbuf, 0);
    if (n > 0) {
        bytes_in += (uint64_t)n;
        if (c->state != C_BUSY) {
            drop_conn(c, E_UNEXPECTED, now, 0);
            errors[E_UNEXPECTED]++;
            open_conn(c, now);
            return;
        }
        int err = feed(c, readbuf, (size_t)n, now);
        if (err) {
            if (c->state == C_BUSY) {
                drop_conn(c, (enum error_kind)err, now, 1);
            } else { /* the answer was complete: the bytes behind it are the error */
                errors[err]++;
                drop_conn(c, (enum error_kind)err, now, 0);
            }
            reconnects++;
            open_conn(c, now);
        } else if (c->state == C_IDLE) {
            after_answer(c, now);
        }
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    /* closed (n == 0) or failed */
    if (c->state == C_BUSY && n == 0 && c->rstate == R_BODY_EOF) {
        c->close_after = 1;
        answered(c, now);
        after_answer(c, now); /* reconnects */
        return;
    }
    if (c->state == C_BUSY) drop_conn(c, n == 0 ? E_CLOSED : E_READ, now, 1);
    else {
        if (n == 0) idle_closes++;
        else errors[E_READ]++;
        drop_conn(c, E_READ, now, 0);
    }
    reconnects++;
    open_conn(c, now);
}

static void on_event(struct conn *c, uint32_t events, int64_t now) {
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            errors[E_CONNECT]++;
            drop_conn(c, E_CONNECT, now, 0);
            return;
        }
        if (!(events & EPOLLOUT)) return;
        watch(c, 0);
        now_free(c, now);
        return;
    }
    if ((events & EPOLLOUT) && c->state == C_BUSY && c->woff < c->wlen) flush_write(c, now);
    if (c->fd >= 0 && (events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(c, now);
}

/* ------------------------------------------------------------------ the loop */

static void arm(int64_t at) {
    if (at == armed_ns) return;
    struct itimerspec its = {0};
    if (at <= 0) at = 1;
    its.it_value.tv_sec = at / 1000000000LL;
    its.it_value.tv_nsec = at % 1000000000LL;
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL) != 0)
        die("timerfd_settime: %s", strerror(errno));
    armed_ns = at;
}

/* Requests still owed: in flight, or scheduled on a connection and not sent. */
static uint64_t outstanding(void) {
    uint64_t n = 0;
    for (int i = 0; i < opt_connections; i++) {
        struct conn *c = &conns[i];
        if (c->state == C_BUSY) n++;
        if (c->next_k < total) n += (total - c->next_k + (uint64_t)opt_connections - 1) /
                                    (uint64_t)opt_connections;
    }
    return n;
}

static void check_timeouts(int64_t now) {
    int64_t limit = (int64_t)(opt_timeout * 1e9);
    for (int i = 0; i < opt_connections; i++) {
        struct conn *c = &conns[i];
        if (c->state == C_BUSY && now - c->sent_ns > limit) {
            drop_conn(c, E_TIMEOUT, now, 1);
            reconnects++;
            open_conn(c, now);
        } else if (c->state == C_DOWN && c->retry_ns <= now) {
            open_conn(c, now);
        }
    }
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* The q-th percentile of sorted values, linear between the closest ranks (as bench.common). */
static double pct(const float *v, uint64_t n, double q) {
    if (n == 0) return NAN;
    double rank = (double)(n - 1) * q / 100.0;
    uint64_t lo = (uint64_t)rank, hi = lo + 1 < n ? lo + 1 : n - 1;
    return v[lo] + (v[hi] - v[lo]) * (rank - (double)lo);
}

/* The --latencies records (see the header), before the latencies are sorted. */
static void write_latencies(void) {
    for (uint64_t i = 0; i < n_latencies; i++) {
        uint32_t rec[2] = {latency_ks[i], 0};
        memcpy(&rec[1], &latencies_us[i], sizeof rec[1]);
        if (fwrite(rec, sizeof rec, 1, latencies_out) != 1)
            die("--latencies %s: %s", opt_latencies, strerror(errno));
    }
    if (fclose(latencies_out) != 0) die("--latencies %s: %s", opt_latencies, strerror(errno));
    latencies_out = NULL;
}

static void print_ms(const char *name, double us, int comma) {
    if (isnan(us)) printf("\"%s\": null%s", name, comma ? ", " : "");
    else printf("\"%s\": %.4f%s", name, us / 1000.0, comma ? ", " : "");
}

static void print_distribution(const char *name, float *v, uint64_t n) {
    qsort(v, n, sizeof *v, cmp_float);
    double sum = 0;
    for (uint64_t i = 0; i < n; i++) sum += v[i];
    printf("  \"%s\": {", name);
    print_ms("p50", pct(v, n, 50), 1);
    print_ms("p90", pct(v, n, 90), 1);
    print_ms("p99", pct(v, n, 99), 1);
    print_ms("p99.9", pct(v, n, 99.9), 1);
    print_ms("p99.99", pct(v, n, 99.99), 1);
    print_ms("max", n ? v[n - 1] : NAN, 1);
    print_ms("mean", n ? sum / (double)n : NAN, 0);
    printf("},\n");
}

/* Open loop: send every request at its due time, then wait for the last answers. */
static void run_schedule(struct epoll_event *events) {
    t0 = now_ns() + 10000000LL; /* 10 ms from now */
    measure_from = due_ns(first_measured);
    int64_t last_due = due_ns(total - 1);
    int64_t drain_until = last_due + (int64_t)(opt_timeout * 1e9);
    int64_t next_check = t0 + CHECK_EVERY_NS;
    for (;;) {
        int64_t now = now_ns();
        while (due_k < total && due_ns(due_k) <= now) {
            struct conn *c = &conns[due_k % (uint64_t)opt_connections];
            if (c->state == C_IDLE && c->next_k == due_k) send_next(c, now);
            due_k++;
            now = now_ns();
        }
        if (now >= next_check) {
            check_timeouts(now);
            next_check = now + CHECK_EVERY_NS;
        }
        if (due_k >= total && (outstanding() == 0 || now >= drain_until)) break;
        arm(due_k < total && due_ns(due_k) < next_check ? due_ns(due_k) : next_check);
        int n = epoll_wait(epfd, events, 512, 100);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        now = now_ns();
        for (int i = 0; i < n; i++) {
            if (!events[i].data.ptr) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("timerfd read: %s", strerror(errno));
                armed_ns = -1;
                continue;
            }
            on_event(events[i].data.ptr, events[i].events, now);
            now = now_ns();
        }
    }
}

/* Closed loop: every connection sends again as soon as its answer is in, until end_ns; then
 * wait for the answers still in flight (up to the answer timeout). */
static void run_closed(struct epoll_event *events) {
    int64_t now = now_ns();
    measure_from = now + (int64_t)(opt_warmup * 1e9);
    end_ns = measure_from + (int64_t)(opt_duration * 1e9);
    int64_t drain_until = end_ns + (int64_t)(opt_timeout * 1e9);
    int64_t next_check = now + CHECK_EVERY_NS;
    sending = 1;
    for (int i = 0; i < opt_connections; i++)
        if (conns[i].state == C_IDLE) send_next(&conns[i], now);
    for (;;) {
        if (now >= next_check) {
            check_timeouts(now);
            next_check = now + CHECK_EVERY_NS;
        }
        if (now >= end_ns || sent_total > MAX_COUNTER) {
            sending = 0;
            int busy = 0;
            for (int i = 0; i < opt_connections; i++) busy += conns[i].state == C_BUSY;
            if (!busy || now >= drain_until) break;
        }
        int64_t wait_ns = (sending ? end_ns : next_check) - now;
        if (next_check - now < wait_ns) wait_ns = next_check - now;
        int n = epoll_wait(epfd, events, 512, wait_ns > 0 ? (int)(wait_ns / 1000000) + 1 : 0);
        if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
        now = now_ns();
        for (int i = 0; i < n; i++) {
            if (!events[i].data.ptr) continue;
            on_event(events[i].data.ptr, events[i].events, now);
            now = now_ns();
        }
    }
}

int main(int argc, char **argv) {
    parse_args(argc, argv);
    resolve_loopback(opt_host, opt_port);
    load_templates(opt_requests);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake at the due time, not up to 50 us after */

    if (opt_closed) {
        grow_latencies();
        lags_us = malloc(sizeof *lags_us); /* no schedule, no lags */
    } else {
        period_ns = 1e9 / opt_rate;
        total = (uint64_t)floor(opt_rate * (opt_warmup + opt_duration));
        first_measured = (uint64_t)ceil(opt_rate * opt_warmup);
        if (total == 0 || first_measured >= total) die("rate x duration is less than 1 request");
        if (total - 1 > MAX_COUNTER) die("more requests than the 9-digit placeholder numbers");
        capacity = total - first_measured;
        latencies_us = malloc(capacity * sizeof *latencies_us);
        lags_us = malloc(capacity * sizeof *lags_us);
    }
    conns = calloc((size_t)opt_connections, sizeof *conns);
    seconds = (size_t)ceil(opt_duration);
    sec_due = calloc(seconds, sizeof *sec_due);
    sec_late = calloc(seconds, sizeof *sec_late);
    sec_max_us = calloc(seconds, sizeof *sec_max_us);
    if (!latencies_us || !lags_us || !conns || !sec_due || !sec_late || !sec_max_us)
        die("out of memory");
    if (opt_latencies) { /* opened now: a bad path fails before any load is sent */
        latency_ks = malloc(capacity * sizeof *latency_ks);
        if (!latency_ks) die("out of memory");
        latencies_out = fopen(opt_latencies, "wb");
        if (!latencies_out) die("--latencies %s: %s", opt_latencies, strerror(errno));
    }

    epfd = epoll_create1(EPOLL_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (epfd < 0 || tfd < 0) die("epoll/timerfd: %s", strerror(errno));
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    /* Connect every connection before the schedule starts. */
    int64_t started = now_ns();
    for (int i = 0; i < opt_connections; i++) {
        struct conn *c = &conns[i];
        c->fd = -1;
        c->next_k = (uint64_t)i;
        c->wbuf = malloc(MAX_TEMPLATE);
        c->head = malloc(MAX_HEAD);
        if (!c->wbuf || !c->head) die("out of memory");
        open_conn(c, started);
    }
    t0 = INT64_MAX / 4; /* nothing is due while connecting */
    struct epoll_event events[512];
    for (;;) {
        int up = 0;
        for (int i = 0; i < opt_connections; i++) up += conns[i].state == C_IDLE;
        if (up == opt_connections) break;
        int64_t now = now_ns();
        if (now - started > CONNECT_WAIT_NS)
            die("cannot open every connection to %s port %d within 5 s (is the server "
                "listening?)", opt_host, opt_port);
        int n = epoll_wait(epfd, events, 512, 50);
        now = now_ns();
        for (int i = 0; i < n; i++)
            if (events[i].data.ptr) on_event(events[i].data.ptr, events[i].events, now);
        check_timeouts(now);
    }
    /* Failed connects retried before the start cost no request: reported apart, not as errors. */
    uint64_t connect_errors = errors[E_CONNECT];
    errors[E_CONNECT] = 0;

    if (opt_closed) run_closed(events);
    else run_schedule(events);
    int64_t finished = now_ns();
    /* Whatever is still owed at the end is an error: in flight = timeout, never sent = unsent. */
    for (int i = 0; i < opt_connections; i++) {
        struct conn *c = &conns[i];
        if (c->state == C_BUSY) errors[E_TIMEOUT]++;
        if (c->next_k < total)
            errors[E_UNSENT] += (total - c->next_k + (uint64_t)opt_connections - 1) /
                                (uint64_t)opt_connections;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    double wall_s = (double)(finished - started) / 1e9;
    double window_s = (double)(last_answer_ns - measure_from) / 1e9;
    uint64_t error_total = 0;
    for (int i = 0; i < E_KINDS; i++) error_total += errors[i];

    printf("{\n");
    printf("  \"host\": \"%s\", \"port\": %d, \"connections\": %d,\n", opt_host, opt_port,
           opt_connections);
    if (opt_closed)
        printf("  \"offered_rate\": null, \"duration_s\": %.3f, \"warmup_s\": %.3f,\n",
               opt_duration, opt_warmup);
    else
        printf("  \"offered_rate\": %.3f, \"duration_s\": %.3f, \"warmup_s\": %.3f,\n",
               opt_rate, opt_duration, opt_warmup);
    printf("  \"request_heads\": %zu, \"schedule\": \"%s\",\n", template_count,
           opt_closed ? "closed loop: each connection sends again when its answer is in"
                      : "request k due at start + k/rate on connection k mod connections");
    /* closed loop: every request sent in the measured seconds counts as scheduled */
    printf("  \"scheduled\": %llu, \"sent\": %llu, \"responses\": %llu,\n",
           (unsigned long long)(opt_closed ? sent_measured : total - first_measured),
           (unsigned long long)sent_measured, (unsigned long long)answered_measured);
    printf("  \"warmup_scheduled\": %llu, \"warmup_sent\": %llu, \"warmup_responses\": %llu,\n",
           (unsigned long long)(opt_closed ? sent_warmup : first_measured),
           (unsigned long long)sent_warmup,
           (unsigned long long)answered_warmup);
    printf("  \"status\": {\"2xx\": %llu, \"3xx\": %llu, \"4xx\": %llu, \"5xx\": %llu, "
           "\"other\": %llu},\n", (unsigned long long)status_2xx, (unsigned long long)status_3xx,
           (unsigned long long)status_4xx, (unsigned long long)status_5xx,
           (unsigned long long)status_other);
    printf("  \"non_2xx\": %llu,\n",
           (unsigned long long)(status_3xx + status_4xx + status_5xx + status_other));
    printf("  \"errors\": {");
    for (int i = 0; i < E_KINDS; i++)
        printf("\"%s\": %llu%s", ERROR_NAMES[i], (unsigned long long)errors[i],
               i + 1 < E_KINDS ? ", " : "");
    printf("},\n  \"errors_total\": %llu, \"connect_errors_before_start\": %llu,\n",
           (unsigned long long)error_total, (unsigned long long)connect_errors);
    printf("  \"reconnects\": %llu, \"server_closed_idle\": %llu, \"bytes_received\": %llu,\n",
           (unsigned long long)reconnects, (unsigned long long)idle_closes,
           (unsigned long long)bytes_in);
    if (opt_closed)
        printf("  \"achieved_rate\": %.3f,\n", (double)answered_in_window / opt_duration);
    else if (answered_measured && window_s > 0)
        printf("  \"achieved_rate\": %.3f,\n", (double)answered_measured / window_s);
    else
        printf("  \"achieved_rate\": 0,\n");
    printf("  \"late_threshold_ms\": %.3f, \"late_sends\": %llu, \"late_waiting_for_answer\": "
           "%llu, \"late_client\": %llu,\n", opt_late_ms, (unsigned long long)late_total,
           (unsigned long long)late_busy, (unsigned long long)late_client);
    if (latencies_out) write_latencies();
    print_distribution("latency_ms", latencies_us, n_latencies); /* sorts them */
    print_distribution("send_lag_ms", lags_us, n_lags);
    printf("  \"per_second\": {\"sent\": [");
    for (size_t i = 0; i < seconds; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)sec_due[i]);
    printf("], \"max_ms\": [");
    for (size_t i = 0; i < seconds; i++) printf("%s%.4f", i ? ", " : "", sec_max_us[i] / 1000.0);
    printf("], \"late_sends\": [");
    for (size_t i = 0; i < seconds; i++)
        printf("%s%llu", i ? ", " : "", (unsigned long long)sec_late[i]);
    printf("]},\n");
    printf("  \"client_cpu_s\": %.3f, \"wall_s\": %.3f, \"client_cpu_pct\": %.1f\n", cpu_s,
           wall_s, wall_s > 0 ? 100.0 * cpu_s / wall_s : 0.0);
    printf("}\n");
    return 0;
}
