/*
 * A guest's side of HYPERVISOR_event_channel_op(cmd, arg): a script of
 * EVTCHNOP_* calls covering all 14 commands, with the argument structures
 * of Xen's public header (evtchn_bind_ipi_t, evtchn_status_t, ...) laid out
 * by the C compiler, made through a hypercall gate someone else implements,
 * and checked against what Xen does (xen/common/event_channel.c's
 * behaviour, as /usr/include/xen/event_channel.h documents it and Xen
 * 4.x implements it; written here from those facts, no code taken).
 *
 * Two domains take part: the frontend, whose guest the script is
 * (unprivileged; the PIRQs below cfg->front_pirqs are its own), and the
 * backend (privileged: it may act on other domains' ports), each with
 * cfg->nr_ports ports (Xen's max_evtchn_port + 1) and cfg->nr_vcpus vCPUs.
 * A gate context per domain makes the call as that domain. Loopback
 * channels (DOMID_SELF) are covered too.
 *
 * Expected values:
 *  - every return value: 0 or -XEN_E* (<xen/errno.h>);
 *  - every port a bind returns: the lowest free number (Xen's
 *    get_free_port), from the script's own record of what it has bound and
 *    closed in each domain;
 *  - EVTCHNOP_status: status, vcpu and the union member of the state
 *    (u.unbound.dom, u.interdomain.dom/port, u.pirq, u.virq), and the bytes
 *    the state does not write left as the guest wrote them (Xen copies the
 *    whole structure back);
 *  - on an error, the OUT fields as the guest wrote them (Xen copies back
 *    only on success).
 *
 * Every comparison counts; every mismatch is one line to cfg's log naming
 * the call (domain, command, arguments), the field, the expected and the
 * actual value.
 *
 * What the set-up stands for, where a real Xen depends on more:
 *  - EVTCHNOP_init_control and EVTCHNOP_expand_array map guest frames,
 *    which the hypervisor under test leaves to its embedder: -ENOSYS, as
 *    from a Xen without the FIFO ABI (Linux then keeps 2-level). In the
 *    FIFO runs the embedder has set the FIFO ABI up already.
 *  - bind_pirq: every PIRQ below cfg->front_pirqs is mapped and permitted.
 *  - the backend resets the frontend while the frontend's controller has
 *    it paused (Xen refuses to reset a running domain other than the
 *    caller with -EINVAL).
 *  - command 14 is Xen's EVTCHNOP_reset_cont (defined for Xen itself only),
 *    which Xen 4.15+ also answers when a guest uses it: with no reset in
 *    progress, -EBUSY. The unknown commands used are 15 and above, and
 *    negative ones.
 *
 * Known divergences of the hypercall surface under test from Xen are
 * marked KNOWN: Xen's value stays the expectation, the other value is
 * counted apart (report->diverged, with a line saying why), anything else
 * is a failure.
 *
 * XO_PREFIX names the exported functions (xo_run, xo_errnos).
 */
#include "xc.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <xen/errno.h>

#ifndef XO_PREFIX
#define XO_PREFIX xo_
#endif
#define XO(name) XC_CAT(XO_PREFIX, name)

/* Port numbers the script's record covers. */
#define XO_MAX_PORTS 1024u
/* What the guest writes into OUT fields before a call. */
#define SENTINEL 0xa5a5a5a5u
#define SENTINEL16 0xa5a5u
/* A port number beyond either ABI (2-level: 4096 on 64-bit; FIFO: 2^17). */
#define BAD_PORT ((uint32_t)EVTCHN_FIFO_NR_CHANNELS)

typedef void (*xo_log_fn)(void *ctx, const char *line);

struct xo_config {
    uint16_t front;       /* the frontend's domain id */
    uint16_t back;        /* the backend's (privileged) */
    uint16_t absent;      /* an id no domain has */
    uint16_t pad;
    uint32_t nr_ports;    /* ports per domain, port 0 included */
    uint32_t nr_vcpus;    /* vCPUs per domain (at least 2) */
    uint32_t front_pirqs; /* the frontend's nr_pirqs (at least 8) */
    uint32_t fifo;        /* both domains run the FIFO ABI */
};

struct xo_report {
    uint64_t compared;   /* values compared */
    uint64_t failures;   /* mismatches */
    uint64_t diverged;   /* known divergences seen */
    uint64_t hypercalls; /* calls made through the gate */
};

enum { FE = 0, BE = 1 };

struct xo {
    xc_hypercall_fn hc;
    void *ctx[2];
    domid_t id[2];
    const struct xo_config *cfg;
    struct xo_report *rep;
    xo_log_fn log;
    void *log_ctx;
    /* A known divergence for the next return value compared, if why is set. */
    int known_rc;
    const char *known_why;
    /* The script's record: which ports of each domain are bound. */
    uint8_t used[2][XO_MAX_PORTS];
};

/* ---- checking ------------------------------------------------------------- */

static void say(struct xo *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(struct xo *s, const char *fmt, ...)
{
    char line[320];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->log(s->log_ctx, line);
}

static void expect(struct xo *s, const char *op, const char *field, int64_t want, int64_t got)
{
    s->rep->compared++;
    if (want != got) {
        s->rep->failures++;
        say(s, "%s: %s expected %lld, got %lld", op, field, (long long)want, (long long)got);
    }
}

/* Marks the next return value compared: `rc` there is a known divergence. */
static void known(struct xo *s, int rc, const char *why)
{
    s->known_rc = rc;
    s->known_why = why;
}

static void expect_rc(struct xo *s, const char *op, int want, int got)
{
    const char *why = s->known_why;
    s->known_why = NULL;
    if (why != NULL && got != want && got == s->known_rc) {
        s->rep->compared++;
        s->rep->diverged++;
        say(s, "%s: rc expected %d (Xen), got %d: known divergence: %s", op, want, got, why);
        return;
    }
    expect(s, op, "rc", want, got);
}

static int call(struct xo *s, int who, int cmd, void *arg)
{
    s->rep->hypercalls++;
    return s->hc(s->ctx[who], cmd, arg);
}

/* ---- the script's record of bound ports ------------------------------------- */

/* Which domain `dom` names, seen from domain `who`; -1 for any other. */
static int which(const struct xo *s, int who, domid_t dom)
{
    if (dom == DOMID_SELF)
        return who;
    if (dom == s->id[FE])
        return FE;
    if (dom == s->id[BE])
        return BE;
    return -1;
}

/* Xen's get_free_port: the lowest free port (port 0 is reserved); 0 if none. */
static uint32_t lowest_free(const struct xo *s, int d)
{
    for (uint32_t p = 1; p < s->cfg->nr_ports; p++)
        if (!s->used[d][p])
            return p;
    return 0;
}

static void record(struct xo *s, int d, uint32_t port, uint8_t bound)
{
    if (d >= 0 && port < s->cfg->nr_ports)
        s->used[d][port] = bound;
}

static const char *dom_name(char *buf, size_t n, domid_t d)
{
    if (d == DOMID_SELF)
        snprintf(buf, n, "self");
    else
        snprintf(buf, n, "%u", (unsigned)d);
    return buf;
}

/*
 * The OUT port of a bind into domain `d`: on success the lowest free port,
 * then recorded as bound; on an error untouched. Returns the port the
 * script goes on with: the expected one, so that one wrong answer does not
 * shift every later expectation.
 */
static uint32_t bound(struct xo *s, const char *op, int d, int want, int rc, uint32_t got)
{
    expect_rc(s, op, want, rc);
    if (want == 0) {
        uint32_t p = d >= 0 ? lowest_free(s, d) : 0;
        expect(s, op, "port", p, got);
        record(s, d, p, 1);
        return p;
    }
    expect(s, op, "port (untouched on error)", SENTINEL, got);
    return 0;
}

/* ---- one helper per command ------------------------------------------------- */

static uint32_t alloc_unbound(struct xo *s, int who, domid_t dom, domid_t remote, int want)
{
    char op[128], a1[8], a2[8];
    evtchn_alloc_unbound_t a = {.dom = dom, .remote_dom = remote, .port = SENTINEL};
    snprintf(op, sizeof op, "dom%u alloc_unbound(dom %s, remote %s)", s->id[who],
             dom_name(a1, sizeof a1, dom), dom_name(a2, sizeof a2, remote));
    int rc = call(s, who, EVTCHNOP_alloc_unbound, &a);
    return bound(s, op, which(s, who, dom), want, rc, a.port);
}

static uint32_t bind_interdomain(struct xo *s, int who, domid_t remote, uint32_t rport, int want)
{
    char op[128], a1[8];
    evtchn_bind_interdomain_t a = {.remote_dom = remote, .remote_port = rport, .local_port = SENTINEL};
    snprintf(op, sizeof op, "dom%u bind_interdomain(remote %s, port %u)", s->id[who],
             dom_name(a1, sizeof a1, remote), rport);
    int rc = call(s, who, EVTCHNOP_bind_interdomain, &a);
    return bound(s, op, who, want, rc, a.local_port);
}

static uint32_t bind_virq(struct xo *s, int who, uint32_t virq, uint32_t vcpu, int want)
{
    char op[128];
    evtchn_bind_virq_t a = {.virq = virq, .vcpu = vcpu, .port = SENTINEL};
    snprintf(op, sizeof op, "dom%u bind_virq(virq %u, vcpu %u)", s->id[who], virq, vcpu);
    int rc = call(s, who, EVTCHNOP_bind_virq, &a);
    return bound(s, op, who, want, rc, a.port);
}

static uint32_t bind_pirq(struct xo *s, int who, uint32_t pirq, uint32_t flags, int want)
{
    char op[128];
    evtchn_bind_pirq_t a = {.pirq = pirq, .flags = flags, .port = SENTINEL};
    snprintf(op, sizeof op, "dom%u bind_pirq(pirq %u, flags %u)", s->id[who], pirq, flags);
    int rc = call(s, who, EVTCHNOP_bind_pirq, &a);
    return bound(s, op, who, want, rc, a.port);
}

static uint32_t bind_ipi(struct xo *s, int who, uint32_t vcpu, int want)
{
    char op[128];
    evtchn_bind_ipi_t a = {.vcpu = vcpu, .port = SENTINEL};
    snprintf(op, sizeof op, "dom%u bind_ipi(vcpu %u)", s->id[who], vcpu);
    int rc = call(s, who, EVTCHNOP_bind_ipi, &a);
    return bound(s, op, who, want, rc, a.port);
}

static void close_port(struct xo *s, int who, uint32_t port, int want)
{
    char op[128];
    evtchn_close_t a = {.port = port};
    snprintf(op, sizeof op, "dom%u close(port %u)", s->id[who], port);
    expect_rc(s, op, want, call(s, who, EVTCHNOP_close, &a));
    if (want == 0)
        record(s, who, port, 0);
}

static void send_port(struct xo *s, int who, uint32_t port, int want)
{
    char op[128];
    evtchn_send_t a = {.port = port};
    snprintf(op, sizeof op, "dom%u send(port %u)", s->id[who], port);
    expect_rc(s, op, want, call(s, who, EVTCHNOP_send, &a));
}

static void unmask(struct xo *s, int who, uint32_t port, int want)
{
    char op[128];
    evtchn_unmask_t a = {.port = port};
    snprintf(op, sizeof op, "dom%u unmask(port %u)", s->id[who], port);
    expect_rc(s, op, want, call(s, who, EVTCHNOP_unmask, &a));
}

static void bind_vcpu(struct xo *s, int who, uint32_t port, uint32_t vcpu, int want)
{
    char op[128];
    evtchn_bind_vcpu_t a = {.port = port, .vcpu = vcpu};
    snprintf(op, sizeof op, "dom%u bind_vcpu(port %u, vcpu %u)", s->id[who], port, vcpu);
    expect_rc(s, op, want, call(s, who, EVTCHNOP_bind_vcpu, &a));
}

static void set_priority(struct xo *s, int who, uint32_t port, uint32_t prio, int want)
{
    char op[128];
    evtchn_set_priority_t a = {.port = port, .priority = prio};
    snprintf(op, sizeof op, "dom%u set_priority(port %u, priority %u)", s->id[who], port, prio);
    expect_rc(s, op, want, call(s, who, EVTCHNOP_set_priority, &a));
}

static void reset(struct xo *s, int who, domid_t dom, int want)
{
    char op[128], a1[8];
    evtchn_reset_t a = {.dom = dom};
    snprintf(op, sizeof op, "dom%u reset(dom %s)", s->id[who], dom_name(a1, sizeof a1, dom));
    expect_rc(s, op, want, call(s, who, EVTCHNOP_reset, &a));
    int d = which(s, who, dom);
    if (want == 0 && d >= 0)
        memset(s->used[d], 0, sizeof s->used[d]);
}

static void init_control(struct xo *s, int who, uint32_t vcpu, int want)
{
    char op[128];
    evtchn_init_control_t a;
    memset(&a, 0, sizeof a);
    a.control_gfn = 0x12345;
    a.offset = 0;
    a.vcpu = vcpu;
    a.link_bits = 0xa5;
    snprintf(op, sizeof op, "dom%u init_control(vcpu %u)", s->id[who], vcpu);
    expect_rc(s, op, want, call(s, who, EVTCHNOP_init_control, &a));
    if (want != 0)
        expect(s, op, "link_bits (untouched on error)", 0xa5, a.link_bits);
}

static void expand_array(struct xo *s, int who, int want)
{
    char op[128];
    evtchn_expand_array_t a = {.array_gfn = 0x12346};
    snprintf(op, sizeof op, "dom%u expand_array", s->id[who]);
    expect_rc(s, op, want, call(s, who, EVTCHNOP_expand_array, &a));
}

/* A command as is: `arg` may be NULL (the guest's copy fails). */
static void raw(struct xo *s, int who, int cmd, void *arg, int want)
{
    char op[128];
    snprintf(op, sizeof op, "dom%u cmd %d (arg %s)", s->id[who], cmd, arg ? "a word" : "NULL");
    expect_rc(s, op, want, call(s, who, cmd, arg));
}

/* The expected outcome of an EVTCHNOP_status. */
struct st {
    int rc;
    uint32_t status, vcpu;
    uint32_t a, b; /* the union: dom, port; pirq; virq */
};
#define ST_ERR(e) ((struct st){.rc = (e)})
#define ST_CLOSED ((struct st){.status = EVTCHNSTAT_closed})
#define ST_IPI(v) ((struct st){.status = EVTCHNSTAT_ipi, .vcpu = (v)})
#define ST_UNBOUND(v, dom) ((struct st){.status = EVTCHNSTAT_unbound, .vcpu = (v), .a = (dom)})
#define ST_INTERDOMAIN(v, dom, port)                                                          \
    ((struct st){.status = EVTCHNSTAT_interdomain, .vcpu = (v), .a = (dom), .b = (port)})
#define ST_PIRQ(v, pirq) ((struct st){.status = EVTCHNSTAT_pirq, .vcpu = (v), .a = (pirq)})
#define ST_VIRQ(v, virq) ((struct st){.status = EVTCHNSTAT_virq, .vcpu = (v), .a = (virq)})

static void status(struct xo *s, int who, domid_t dom, uint32_t port, struct st w)
{
    char op[128], a1[8];
    evtchn_status_t a;
    memset(&a, 0xa5, sizeof a);
    a.dom = dom;
    a.port = port;
    snprintf(op, sizeof op, "dom%u status(dom %s, port %u)", s->id[who],
             dom_name(a1, sizeof a1, dom), port);
    expect_rc(s, op, w.rc, call(s, who, EVTCHNOP_status, &a));
    if (w.rc != 0) {
        expect(s, op, "status (untouched on error)", SENTINEL, a.status);
        expect(s, op, "vcpu (untouched on error)", SENTINEL, a.vcpu);
        return;
    }
    expect(s, op, "status", w.status, a.status);
    expect(s, op, "vcpu", w.vcpu, a.vcpu);
    switch (w.status) {
    case EVTCHNSTAT_unbound:
        expect(s, op, "u.unbound.dom", w.a, a.u.unbound.dom);
        expect(s, op, "u.interdomain.port (not written)", SENTINEL, a.u.interdomain.port);
        break;
    case EVTCHNSTAT_interdomain:
        expect(s, op, "u.interdomain.dom", w.a, a.u.interdomain.dom);
        expect(s, op, "u.interdomain.port", w.b, a.u.interdomain.port);
        break;
    case EVTCHNSTAT_pirq:
        expect(s, op, "u.pirq", w.a, a.u.pirq);
        break;
    case EVTCHNSTAT_virq:
        expect(s, op, "u.virq", w.a, a.u.virq);
        break;
    default: /* closed, IPI: the union is not written */
        expect(s, op, "u.interdomain.dom (not written)", SENTINEL16, a.u.interdomain.dom);
        expect(s, op, "u.interdomain.port (not written)", SENTINEL, a.u.interdomain.port);
        break;
    }
}

/* ---- the script ------------------------------------------------------------- */

/* Ports 1, 2, ... below refer to cfg->nr_ports = 64, as in the tests. */

/* Unknown commands, unreadable arguments, the frame-mapping commands, port
 * 0 (reserved) and a port beyond the ABI. */
static void surface(struct xo *s)
{
    const uint32_t nv = s->cfg->nr_vcpus;
    uint32_t word = SENTINEL;

    raw(s, FE, 15, &word, -XEN_ENOSYS);
    raw(s, FE, 0x7fffffff, &word, -XEN_ENOSYS);
    raw(s, FE, -1, &word, -XEN_ENOSYS);
    expect(s, "cmd 15, -1, 0x7fffffff", "argument (untouched)", SENTINEL, word);
    raw(s, FE, 15, NULL, -XEN_ENOSYS);
    /* A known command whose argument cannot be copied in: -EFAULT. */
    raw(s, FE, EVTCHNOP_send, NULL, -XEN_EFAULT);
    raw(s, FE, EVTCHNOP_status, NULL, -XEN_EFAULT);
    raw(s, FE, EVTCHNOP_bind_ipi, NULL, -XEN_EFAULT);
    raw(s, BE, EVTCHNOP_reset, NULL, -XEN_EFAULT);
    /* EVTCHNOP_reset_cont (14) with no reset to continue. */
    {
        evtchn_reset_t r = {.dom = DOMID_SELF};
        raw(s, FE, 14, &r, -XEN_EBUSY);
    }

    init_control(s, FE, 0, -XEN_ENOSYS);
    expand_array(s, FE, -XEN_ENOSYS);

    /* Port 0: reported closed, accepted by unmask (which does nothing),
     * FIFO set_priority -EACCES, refused by everything else. */
    status(s, FE, DOMID_SELF, 0, ST_CLOSED);
    status(s, BE, DOMID_SELF, 0, ST_CLOSED);
    close_port(s, FE, 0, -XEN_EINVAL);
    send_port(s, FE, 0, -XEN_EINVAL);
    unmask(s, FE, 0, 0);
    bind_vcpu(s, FE, 0, 0, -XEN_EINVAL);
    set_priority(s, FE, 0, 7, s->cfg->fifo ? -XEN_EACCES : -XEN_ENOSYS);

    /* A port beyond the ABI: -EINVAL; bind_vcpu looks at the vCPU first. */
    status(s, FE, DOMID_SELF, BAD_PORT, ST_ERR(-XEN_EINVAL));
    close_port(s, FE, BAD_PORT, -XEN_EINVAL);
    send_port(s, FE, BAD_PORT, -XEN_EINVAL);
    unmask(s, FE, BAD_PORT, -XEN_EINVAL);
    bind_vcpu(s, FE, BAD_PORT, 0, -XEN_EINVAL);
    bind_vcpu(s, FE, BAD_PORT, nv, -XEN_ENOENT);
    set_priority(s, FE, BAD_PORT, 7, -XEN_EINVAL);
}

/* IPIs, VIRQs and PIRQs of the frontend; returns its first IPI's port. */
static uint32_t local_kinds(struct xo *s)
{
    const uint32_t nv = s->cfg->nr_vcpus;
    const uint32_t np = s->cfg->front_pirqs;

    /* IPIs: fixed to their vCPU; a send raises the port itself. */
    uint32_t ipi0 = bind_ipi(s, FE, 0, 0); /* 1 */
    uint32_t ipi1 = bind_ipi(s, FE, 1, 0); /* 2 */
    bind_ipi(s, FE, nv, -XEN_ENOENT);
    bind_ipi(s, FE, 0xffffffffu, -XEN_ENOENT);
    status(s, FE, DOMID_SELF, ipi0, ST_IPI(0));
    status(s, FE, s->id[FE], ipi1, ST_IPI(1)); /* its own id, spelled out */
    send_port(s, FE, ipi1, 0);
    bind_vcpu(s, FE, ipi0, 1, -XEN_EINVAL);
    status(s, FE, DOMID_SELF, ipi0, ST_IPI(0));

    /* VIRQs: per-vCPU ones (timer, debug, profiling, PMU) have a port per
     * vCPU, fixed to it; a global one is bound on vCPU 0 and may move. */
    uint32_t t0 = bind_virq(s, FE, VIRQ_TIMER, 0, 0); /* 3 */
    uint32_t t1 = bind_virq(s, FE, VIRQ_TIMER, 1, 0); /* 4 */
    bind_virq(s, FE, VIRQ_TIMER, 0, -XEN_EEXIST);
    bind_virq(s, FE, NR_VIRQS, 0, -XEN_EINVAL);
    bind_virq(s, FE, 0xffffffffu, 0, -XEN_EINVAL);
    bind_virq(s, FE, VIRQ_DEBUG, nv, -XEN_ENOENT);
    bind_virq(s, FE, VIRQ_CONSOLE, 1, -XEN_EINVAL);
    bind_virq(s, FE, VIRQ_CONSOLE, nv, -XEN_EINVAL); /* global before the vCPU */
#if defined(__x86_64__) || defined(__i386__)
    bind_virq(s, FE, VIRQ_ARCH_0, 1, -XEN_EINVAL); /* x86's are global */
#endif
    /* VIRQ 5 has no name: global, as every number Xen does not list as
     * per-vCPU. */
    bind_virq(s, FE, 5, 1, -XEN_EINVAL);
    uint32_t v5 = bind_virq(s, FE, 5, 0, 0); /* 5 */
    status(s, FE, DOMID_SELF, v5, ST_VIRQ(0, 5));
    close_port(s, FE, v5, 0);
    uint32_t con = bind_virq(s, FE, VIRQ_CONSOLE, 0, 0); /* 5 */
    uint32_t pmu = bind_virq(s, FE, VIRQ_XENPMU, 1, 0);  /* 6 */
    status(s, FE, DOMID_SELF, t0, ST_VIRQ(0, VIRQ_TIMER));
    status(s, FE, DOMID_SELF, t1, ST_VIRQ(1, VIRQ_TIMER));
    status(s, FE, DOMID_SELF, con, ST_VIRQ(0, VIRQ_CONSOLE));
    status(s, FE, DOMID_SELF, pmu, ST_VIRQ(1, VIRQ_XENPMU));
    bind_vcpu(s, FE, con, 1, 0);
    status(s, FE, DOMID_SELF, con, ST_VIRQ(1, VIRQ_CONSOLE));
    bind_virq(s, FE, VIRQ_CONSOLE, 0, -XEN_EEXIST); /* still bound, though moved */
    bind_vcpu(s, FE, t0, 1, -XEN_EINVAL);
    bind_vcpu(s, FE, pmu, 0, -XEN_EINVAL);
    bind_vcpu(s, FE, con, nv, -XEN_ENOENT);
    send_port(s, FE, con, -XEN_EINVAL);
    send_port(s, FE, t0, -XEN_EINVAL);

    /* PIRQs: on vCPU 0, movable; the guest cannot send on them. */
    uint32_t pq = bind_pirq(s, FE, 3, BIND_PIRQ__WILL_SHARE, 0); /* 7 */
    status(s, FE, DOMID_SELF, pq, ST_PIRQ(0, 3));
    bind_pirq(s, FE, 3, 0, -XEN_EEXIST);
    bind_pirq(s, FE, np, 0, -XEN_EINVAL);
    bind_pirq(s, FE, 0xffffffffu, 0, -XEN_EINVAL);
    bind_pirq(s, BE, 0, 0, -XEN_EINVAL); /* the backend has none */
    send_port(s, FE, pq, -XEN_EINVAL);
    bind_vcpu(s, FE, pq, 1, 0);
    status(s, FE, DOMID_SELF, pq, ST_PIRQ(1, 3));

    /* Close and bind again: the number comes back, on the vCPU bound, and a
     * free port refuses everything but unmask, which leaves it alone (FIFO
     * set_priority: -EACCES, Xen's answer for a channel not usable). */
    close_port(s, FE, ipi1, 0);
    status(s, FE, DOMID_SELF, ipi1, ST_CLOSED);
    close_port(s, FE, ipi1, -XEN_EINVAL);
    send_port(s, FE, ipi1, -XEN_EINVAL);
    bind_vcpu(s, FE, ipi1, 0, -XEN_EINVAL);
    unmask(s, FE, ipi1, 0);
    set_priority(s, FE, ipi1, 5, s->cfg->fifo ? -XEN_EACCES : -XEN_ENOSYS);
    ipi1 = bind_ipi(s, FE, 0, 0); /* 2 again */
    status(s, FE, DOMID_SELF, ipi1, ST_IPI(0));

    close_port(s, FE, con, 0);
    status(s, FE, DOMID_SELF, con, ST_CLOSED); /* vCPU 0 again */
    con = bind_virq(s, FE, VIRQ_CONSOLE, 0, 0); /* 5 again */
    status(s, FE, DOMID_SELF, con, ST_VIRQ(0, VIRQ_CONSOLE));
    close_port(s, FE, t1, 0);
    bind_virq(s, FE, VIRQ_TIMER, 0, -XEN_EEXIST); /* vCPU 0's is still bound */
    t1 = bind_virq(s, FE, VIRQ_TIMER, 1, 0); /* 4 again */
    status(s, FE, DOMID_SELF, t1, ST_VIRQ(1, VIRQ_TIMER));
    close_port(s, FE, pq, 0);
    pq = bind_pirq(s, FE, 3, 0, 0); /* 7 again */
    status(s, FE, DOMID_SELF, pq, ST_PIRQ(0, 3));
    return ipi0;
}

/* Interdomain channels between the frontend and the backend, and loopback
 * ones; returns the frontend's port still unbound for the backend. */
static uint32_t interdomain(struct xo *s)
{
    const domid_t F = s->id[FE], B = s->id[BE], X = s->cfg->absent;

    alloc_unbound(s, FE, B, F, -XEN_EPERM); /* another domain's: privileged */
    alloc_unbound(s, FE, X, B, -XEN_ESRCH);
    alloc_unbound(s, BE, X, F, -XEN_ESRCH);
    uint32_t own = alloc_unbound(s, FE, F, B, 0); /* 8: its own id, spelled out */
    status(s, FE, DOMID_SELF, own, ST_UNBOUND(0, B));
    close_port(s, FE, own, 0);
    uint32_t fu = alloc_unbound(s, FE, DOMID_SELF, B, 0); /* 8 */
    status(s, FE, DOMID_SELF, fu, ST_UNBOUND(0, B));
    send_port(s, FE, fu, 0); /* dropped */
    bind_vcpu(s, FE, fu, 1, 0);
    status(s, FE, DOMID_SELF, fu, ST_UNBOUND(1, B));
    bind_vcpu(s, FE, fu, 0, 0);

    /* The backend connects; status of the other domain's end is for a
     * privileged caller only, after the domain and the port are checked. */
    uint32_t bi = bind_interdomain(s, BE, F, fu, 0); /* backend 1 */
    status(s, BE, DOMID_SELF, bi, ST_INTERDOMAIN(0, F, fu));
    status(s, FE, DOMID_SELF, fu, ST_INTERDOMAIN(0, B, bi));
    status(s, BE, F, fu, ST_INTERDOMAIN(0, B, bi));
    status(s, FE, B, bi, ST_ERR(-XEN_EPERM));
    status(s, FE, X, 1, ST_ERR(-XEN_ESRCH));
    status(s, BE, X, 1, ST_ERR(-XEN_ESRCH));
    status(s, FE, B, BAD_PORT, ST_ERR(-XEN_EINVAL));
    status(s, BE, F, BAD_PORT, ST_ERR(-XEN_EINVAL));

    /* Only an unbound port offered to the caller can be connected to; the
     * remote domain is looked up first. */
    bind_interdomain(s, FE, B, bi, -XEN_EINVAL);
    bind_interdomain(s, FE, B, 0, -XEN_EINVAL);
    bind_interdomain(s, FE, B, BAD_PORT, -XEN_EINVAL);
    bind_interdomain(s, FE, B, lowest_free(s, BE), -XEN_EINVAL); /* free */
    bind_interdomain(s, FE, X, 1, -XEN_ESRCH);
    uint32_t bx = alloc_unbound(s, BE, DOMID_SELF, X, 0); /* backend 2 */
    status(s, BE, DOMID_SELF, bx, ST_UNBOUND(0, X));
    bind_interdomain(s, FE, B, bx, -XEN_EINVAL); /* offered to another */

    /* The frontend connects; sends both ways. */
    uint32_t bu = alloc_unbound(s, BE, DOMID_SELF, F, 0); /* backend 3 */
    uint32_t fi = bind_interdomain(s, FE, B, bu, 0);       /* 9 */
    status(s, FE, DOMID_SELF, fi, ST_INTERDOMAIN(0, B, bu));
    status(s, BE, DOMID_SELF, bu, ST_INTERDOMAIN(0, F, fi));
    send_port(s, FE, fi, 0);
    send_port(s, BE, bu, 0);

    /* The backend offers a frontend port; DOMID_SELF as the remote is the
     * caller, the backend. */
    uint32_t fb = alloc_unbound(s, BE, F, DOMID_SELF, 0); /* 10 */
    status(s, FE, DOMID_SELF, fb, ST_UNBOUND(0, B));

    /* Closing one end returns the other to unbound, for the closer's
     * domain, on its own vCPU; the closed end's vCPU is 0 again. */
    bind_vcpu(s, FE, fi, 1, 0);
    bind_vcpu(s, BE, bu, 1, 0);
    status(s, FE, DOMID_SELF, fi, ST_INTERDOMAIN(1, B, bu));
    close_port(s, FE, fi, 0);
    status(s, BE, DOMID_SELF, bu, ST_UNBOUND(1, F));
    status(s, FE, DOMID_SELF, fi, ST_CLOSED);
    send_port(s, BE, bu, 0); /* dropped */
    uint32_t fi2 = bind_interdomain(s, FE, B, bu, 0); /* 9 again */
    status(s, BE, DOMID_SELF, bu, ST_INTERDOMAIN(1, F, fi2));
    status(s, FE, DOMID_SELF, fi2, ST_INTERDOMAIN(0, B, bu));
    close_port(s, BE, bu, 0);
    status(s, FE, DOMID_SELF, fi2, ST_UNBOUND(0, B));
    status(s, BE, DOMID_SELF, bu, ST_CLOSED);
    send_port(s, FE, fi2, 0); /* dropped */
    close_port(s, FE, fi2, 0);
    close_port(s, FE, fi2, -XEN_EINVAL);
    close_port(s, BE, bi, 0);
    status(s, FE, DOMID_SELF, fu, ST_UNBOUND(0, B));
    close_port(s, BE, bx, 0);

    /* Loopback: a domain connected to itself. */
    uint32_t la = alloc_unbound(s, FE, DOMID_SELF, DOMID_SELF, 0); /* 9 */
    status(s, FE, DOMID_SELF, la, ST_UNBOUND(0, F));
    uint32_t lb = bind_interdomain(s, FE, DOMID_SELF, la, 0); /* 11 */
    status(s, FE, DOMID_SELF, la, ST_INTERDOMAIN(0, F, lb));
    status(s, FE, DOMID_SELF, lb, ST_INTERDOMAIN(0, F, la));
    send_port(s, FE, lb, 0);
    send_port(s, FE, la, 0);
    bind_vcpu(s, FE, la, 1, 0);
    close_port(s, FE, lb, 0);
    status(s, FE, DOMID_SELF, la, ST_UNBOUND(1, F));
    status(s, FE, DOMID_SELF, lb, ST_CLOSED);
    uint32_t lc = bind_interdomain(s, FE, F, la, 0); /* its own id; 11 again */
    status(s, FE, DOMID_SELF, la, ST_INTERDOMAIN(1, F, lc));
    close_port(s, FE, la, 0);
    status(s, FE, DOMID_SELF, lc, ST_UNBOUND(0, F));
    close_port(s, FE, lc, 0);
    return fu;
}

/* EVTCHNOP_set_priority: FIFO only, 0 ..= 15, any valid port. */
static void priorities(struct xo *s, uint32_t port)
{
    if (s->cfg->fifo) {
        set_priority(s, FE, port, 3, 0);
        set_priority(s, FE, port, 16, -XEN_EINVAL);
        set_priority(s, FE, port, 0xffffffffu, -XEN_EINVAL);
        set_priority(s, FE, port, 15, 0);
        set_priority(s, FE, port, 0, 0);
        set_priority(s, FE, lowest_free(s, FE), 9, -XEN_EACCES); /* a free port */
    } else {
        set_priority(s, FE, port, 3, -XEN_ENOSYS);
        set_priority(s, FE, port, 16, -XEN_ENOSYS);
    }
    set_priority(s, FE, BAD_PORT, 3, -XEN_EINVAL);
}

/* Fills a domain's ports with IPIs; `was` gets the record before. */
static void fill(struct xo *s, int who, uint8_t *was)
{
    memcpy(was, s->used[who], XO_MAX_PORTS);
    while (lowest_free(s, who) != 0)
        bind_ipi(s, who, 0, 0);
}

/* Closes what `fill` bound. */
static void unfill(struct xo *s, int who, const uint8_t *was)
{
    for (uint32_t p = 1; p < s->cfg->nr_ports; p++)
        if (s->used[who][p] && !was[p])
            close_port(s, who, p, 0);
}

/* Full port tables: -ENOSPC, after the checks Xen makes first. */
static void full(struct xo *s, uint32_t fu)
{
    const domid_t F = s->id[FE], B = s->id[BE], X = s->cfg->absent;
    const uint32_t nv = s->cfg->nr_vcpus;
    uint8_t was[XO_MAX_PORTS];

    fill(s, FE, was);
    bind_ipi(s, FE, 0, -XEN_ENOSPC);
    bind_ipi(s, FE, nv, -XEN_ENOENT);
    alloc_unbound(s, FE, DOMID_SELF, B, -XEN_ENOSPC);
    alloc_unbound(s, BE, F, B, -XEN_ENOSPC);
    bind_interdomain(s, FE, B, BAD_PORT, -XEN_ENOSPC); /* the local port first */
    bind_interdomain(s, FE, X, 1, -XEN_ESRCH);         /* after the domain */
    bind_virq(s, FE, VIRQ_DEBUG, 0, -XEN_ENOSPC);
    bind_virq(s, FE, VIRQ_TIMER, 0, -XEN_EEXIST);
    bind_virq(s, FE, VIRQ_CONSOLE, 1, -XEN_EINVAL);
    bind_virq(s, FE, VIRQ_DEBUG, nv, -XEN_ENOENT);
    bind_pirq(s, FE, 5, 0, -XEN_ENOSPC);
    bind_pirq(s, FE, 3, 0, -XEN_EEXIST);
    bind_pirq(s, FE, s->cfg->front_pirqs, 0, -XEN_EINVAL);
    unfill(s, FE, was);

    fill(s, BE, was);
    alloc_unbound(s, FE, B, F, -XEN_ENOSPC);
    alloc_unbound(s, BE, DOMID_SELF, F, -XEN_ENOSPC);
    bind_interdomain(s, BE, F, fu, -XEN_ENOSPC);
    status(s, FE, DOMID_SELF, fu, ST_UNBOUND(0, B)); /* unchanged */
    unfill(s, BE, was);
    uint32_t bf = bind_interdomain(s, BE, F, fu, 0);
    status(s, FE, DOMID_SELF, fu, ST_INTERDOMAIN(0, B, bf));
}

/* EVTCHNOP_reset: of the caller, or by a privileged caller of another. */
static void resets(struct xo *s, uint32_t ipi0, uint32_t fu)
{
    const domid_t F = s->id[FE], B = s->id[BE], X = s->cfg->absent;

    reset(s, FE, B, -XEN_EPERM);
    reset(s, FE, X, -XEN_ESRCH);
    reset(s, BE, X, -XEN_ESRCH);

    uint32_t bo = alloc_unbound(s, BE, DOMID_SELF, F, 0);
    uint32_t fo = bind_interdomain(s, FE, B, bo, 0);
    status(s, BE, DOMID_SELF, bo, ST_INTERDOMAIN(0, F, fo));
    reset(s, FE, DOMID_SELF, 0);
    status(s, FE, DOMID_SELF, ipi0, ST_CLOSED);
    status(s, FE, DOMID_SELF, fu, ST_CLOSED);
    status(s, FE, DOMID_SELF, fo, ST_CLOSED);
    status(s, BE, DOMID_SELF, bo, ST_UNBOUND(0, F)); /* for the frontend again */

    /* The VIRQ and PIRQ bindings went with their ports. */
    uint32_t t = bind_virq(s, FE, VIRQ_TIMER, 0, 0); /* 1 */
    uint32_t p = bind_pirq(s, FE, 3, 0, 0);          /* 2 */
    status(s, FE, DOMID_SELF, t, ST_VIRQ(0, VIRQ_TIMER));
    status(s, FE, DOMID_SELF, p, ST_PIRQ(0, 3));
    if (s->cfg->fifo) {
        /* Xen's reset returns a FIFO domain to 2-level. */
        known(s, 0,
              "the FIFO ABI stays after a reset (the ABI switch is the embedder's; "
              "Xen goes back to 2-level)");
        set_priority(s, FE, t, 3, -XEN_ENOSYS);
    }

    /* The backend resets the (paused) frontend. */
    reset(s, BE, F, 0);
    status(s, FE, DOMID_SELF, t, ST_CLOSED);
    status(s, FE, DOMID_SELF, p, ST_CLOSED);
    p = bind_pirq(s, FE, 3, 0, 0); /* 1 */
    status(s, FE, DOMID_SELF, p, ST_PIRQ(0, 3));
    close_port(s, FE, p, 0);

    /* The backend closes whatever it still has. */
    for (uint32_t q = 1; q < s->cfg->nr_ports; q++)
        if (s->used[BE][q])
            close_port(s, BE, q, 0);
}

/*
 * The state the script leaves, which the caller checks on its side:
 *   frontend 1: IPI on vCPU 1, pending (sent);
 *   frontend 2: interdomain to backend 1, vCPU 0, pending (the bind's event);
 *   frontend 3: PIRQ 2 on vCPU 1;
 *   frontend 4: VIRQ_CONSOLE on vCPU 0;
 *   backend 1: interdomain to frontend 2, pending (the frontend's send),
 *              FIFO priority 3;
 *   no other port bound in either domain.
 */
static void final_state(struct xo *s)
{
    const domid_t F = s->id[FE], B = s->id[BE];

    uint32_t ipi = bind_ipi(s, FE, 1, 0);
    send_port(s, FE, ipi, 0);
    uint32_t bo = alloc_unbound(s, BE, DOMID_SELF, F, 0);
    if (s->cfg->fifo)
        set_priority(s, BE, bo, 3, 0);
    uint32_t fi = bind_interdomain(s, FE, B, bo, 0);
    send_port(s, FE, fi, 0);
    uint32_t pq = bind_pirq(s, FE, 2, 0, 0);
    bind_vcpu(s, FE, pq, 1, 0);
    uint32_t con = bind_virq(s, FE, VIRQ_CONSOLE, 0, 0);

    expect(s, "final state", "frontend IPI port", 1, ipi);
    expect(s, "final state", "frontend interdomain port", 2, fi);
    expect(s, "final state", "frontend PIRQ port", 3, pq);
    expect(s, "final state", "frontend VIRQ port", 4, con);
    expect(s, "final state", "backend port", 1, bo);
    status(s, FE, DOMID_SELF, ipi, ST_IPI(1));
    status(s, FE, DOMID_SELF, fi, ST_INTERDOMAIN(0, B, bo));
    status(s, FE, DOMID_SELF, pq, ST_PIRQ(1, 2));
    status(s, FE, DOMID_SELF, con, ST_VIRQ(0, VIRQ_CONSOLE));
    status(s, BE, DOMID_SELF, bo, ST_INTERDOMAIN(0, F, fi));
    status(s, BE, F, 5, ST_CLOSED);
    status(s, BE, DOMID_SELF, 2, ST_CLOSED);
}

/*
 * Runs the script: `hc` with `front` makes a call as the frontend, with
 * `back` as the backend. Mismatch lines go to `log`. Returns 0, or
 * -XEN_EINVAL (and runs nothing) if `cfg` is outside what the script
 * covers.
 */
int XO(run)(xc_hypercall_fn hc, void *front, void *back, const struct xo_config *cfg,
            xo_log_fn log, void *log_ctx, struct xo_report *rep)
{
    if (cfg->nr_ports < 16 || cfg->nr_ports > XO_MAX_PORTS || cfg->nr_vcpus < 2 ||
        cfg->front_pirqs < 8 || cfg->front == cfg->back || cfg->absent == cfg->front ||
        cfg->absent == cfg->back)
        return -XEN_EINVAL;

    struct xo s;
    memset(&s, 0, sizeof s);
    s.hc = hc;
    s.ctx[FE] = front;
    s.ctx[BE] = back;
    s.id[FE] = cfg->front;
    s.id[BE] = cfg->back;
    s.cfg = cfg;
    s.rep = rep;
    s.log = log;
    s.log_ctx = log_ctx;
    memset(rep, 0, sizeof *rep);

    surface(&s);
    uint32_t ipi0 = local_kinds(&s);
    uint32_t fu = interdomain(&s);
    priorities(&s, ipi0);
    full(&s, fu);
    resets(&s, ipi0, fu);
    final_state(&s);
    return 0;
}

/* The <xen/errno.h> numbers the script expects, for the caller to compare
 * with its own: EPERM, ENOENT, ESRCH, EFAULT, EEXIST, EINVAL, ENOSPC,
 * ENOSYS. */
void XO(errnos)(int32_t out[8])
{
    static const int32_t v[8] = {XEN_EPERM,  XEN_ENOENT, XEN_ESRCH,  XEN_EFAULT,
                                 XEN_EEXIST, XEN_EINVAL, XEN_ENOSPC, XEN_ENOSYS};
    memcpy(out, v, sizeof v);
}
