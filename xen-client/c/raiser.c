/*
 * A small hypervisor's event-channel raise side, written from the behaviour
 * of Xen's common/event_2l.c and common/event_fifo.c, over memory a guest
 * delivers from. It keeps its own port table (state, notify vCPU, priority)
 * and serves bind (as bind_ipi), close, send, unmask, bind_vcpu and
 * set_priority through one entry, event_channel_op, taking Xen's argument
 * structs.
 *
 * It writes a guest's mask (the 2-level evtchn_mask bit, the FIFO MASKED
 * bit) only in unmask, the guest's own request.
 *
 * 2-level:
 *  set_pending: test-and-set the pending bit; if it was clear and the port is
 *    not masked and the test-and-set of the word's selector bit on the notify
 *    vCPU found it clear, set evtchn_upcall_pending (kick on its 0 -> 1).
 *  unmask: test-and-clear the mask bit; if it was set and the port is
 *    pending, set the selector bit and upcall flag of the notify vCPU.
 * FIFO:
 *  set_pending: set PENDING; if the event is neither MASKED nor LINKED, lock
 *    the queue it was last linked on (retrying while that changes; Xen gives
 *    up after 3 tries, and so does this), set LINKED (done if it was set),
 *    invalidate that queue's tail if it is this event, move to the new queue's
 *    lock, link after the tail if the tail is still LINKED (setting BUSY
 *    after a failed compare-exchange, giving up after 4 more, as Xen), else
 *    write the head; on a new head set the queue's ready bit and, on its
 *    0 -> 1, the upcall flag.
 *  unmask: clear MASKED; if PENDING, run the link part again.
 * bind_vcpu changes the notify vCPU only (an event already queued stays on
 * the old vCPU's queue until consumed; the next raise moves the event).
 *
 * Defines select deliberately broken variants (negative controls):
 *  XR_BROKEN_UNMASK     unmask clears the mask and raises nothing.
 *  XR_BROKEN_BIND_VCPU  bind_vcpu also clears the port's mask.
 * XR_PREFIX names the variant's exported table (xr_ops for the real one).
 */
#include "xc.h"

#include <stdlib.h>

#ifndef XR_PREFIX
#define XR_PREFIX xr_
#endif
#define XR(name) XC_CAT(XR_PREFIX, name)

enum { XR_ABI_2L = 2, XR_ABI_FIFO = 3 };
enum { ECS_FREE = 0, ECS_IPI = 1 };

struct xr_stats {
    uint64_t sends;             /* EVTCHNOP_send that found a bound port */
    uint64_t raised;            /* of which made an event newly pending */
    uint64_t kicks;             /* upcall flag 0 -> 1 */
    uint64_t unmasks;           /* EVTCHNOP_unmask */
    uint64_t unmask_raises;     /* of which raised the event */
    uint64_t lost_queue_changes; /* FIFO: gave up locking the old queue */
    uint64_t link_gave_up;      /* FIFO: gave up linking after a busy tail */
};

struct xr_chan {
    int32_t lock;         /* rw: send/unmask read, bind/close/bind_vcpu write */
    uint32_t state;
    uint32_t notify_vcpu;
    uint8_t priority;
    uint32_t last_vcpu;   /* FIFO: queue the event was last linked on */
    uint8_t last_priority;
};

struct xr_queue {
    uint8_t lock;
    uint32_t tail;
};

struct xr {
    int abi;
    uint32_t nr_ports, nr_vcpus;
    struct shared_info *si;
    event_word_t *words;
    struct evtchn_fifo_control_block *cbs;
    struct vcpu_info *vis;
    xc_kick_fn kick;
    void *kick_ctx;
    uint8_t domain_lock;  /* Xen's d->event_lock */
    struct xr_chan *chan;
    struct xr_queue *queues; /* vcpu * 16 + priority */
    struct xr_stats stats;
};

#define STAT(r, field) __atomic_fetch_add(&(r)->stats.field, 1, __ATOMIC_RELAXED)

static struct xr *alloc_raiser(uint32_t nr_ports, uint32_t nr_vcpus, xc_kick_fn kick, void *ctx)
{
    struct xr *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->nr_ports = nr_ports;
    r->nr_vcpus = nr_vcpus;
    r->kick = kick;
    r->kick_ctx = ctx;
    r->chan = calloc(nr_ports ? nr_ports : 1, sizeof(struct xr_chan));
    r->queues = calloc((size_t)(nr_vcpus ? nr_vcpus : 1) * EVTCHN_FIFO_MAX_QUEUES,
                       sizeof(struct xr_queue));
    if (!r->chan || !r->queues) {
        free(r->chan);
        free(r->queues);
        free(r);
        return NULL;
    }
    for (uint32_t p = 0; p < nr_ports; p++) {
        r->chan[p].priority = EVTCHN_FIFO_PRIORITY_DEFAULT;
        r->chan[p].last_priority = EVTCHN_FIFO_PRIORITY_DEFAULT;
    }
    return r;
}

static struct xr *new_2l(struct shared_info *si, uint32_t nr_vcpus, uint32_t nr_ports,
                         xc_kick_fn kick, void *ctx)
{
    if (!si || nr_vcpus == 0 || nr_vcpus > XEN_LEGACY_MAX_VCPUS ||
        nr_ports > XC_BITS_PER_WORD * XC_BITS_PER_WORD)
        return NULL;
    struct xr *r = alloc_raiser(nr_ports, nr_vcpus, kick, ctx);
    if (!r)
        return NULL;
    r->abi = XR_ABI_2L;
    r->si = si;
    r->vis = si->vcpu_info;
    return r;
}

static struct xr *new_fifo(event_word_t *words, uint32_t nr_ports,
                           struct evtchn_fifo_control_block *cbs, struct vcpu_info *vis,
                           uint32_t nr_vcpus, xc_kick_fn kick, void *ctx)
{
    if (!words || !cbs || !vis || nr_vcpus == 0 || nr_ports > EVTCHN_FIFO_NR_CHANNELS)
        return NULL;
    struct xr *r = alloc_raiser(nr_ports, nr_vcpus, kick, ctx);
    if (!r)
        return NULL;
    r->abi = XR_ABI_FIFO;
    r->words = words;
    r->cbs = cbs;
    r->vis = vis;
    return r;
}

static void free_raiser(struct xr *r)
{
    if (!r)
        return;
    free(r->chan);
    free(r->queues);
    free(r);
}

/* Xen's vcpu_mark_events_pending: kick on the flag's 0 -> 1. */
static void mark_events_pending(struct xr *r, uint32_t vcpu)
{
    if (!XC_XCHG(&r->vis[vcpu].evtchn_upcall_pending, 1)) {
        STAT(r, kicks);
        r->kick(r->kick_ctx, vcpu);
    }
}

/* ---- 2-level ------------------------------------------------------------ */

static xen_ulong_t bit_of(uint32_t port)
{
    return (xen_ulong_t)1 << (port % XC_BITS_PER_WORD);
}

static void raise_sel_2l(struct xr *r, uint32_t vcpu, uint32_t port)
{
    xen_ulong_t sel = (xen_ulong_t)1 << (port / XC_BITS_PER_WORD);
    if (!(XC_OR(&r->vis[vcpu].evtchn_pending_sel, sel) & sel))
        mark_events_pending(r, vcpu);
}

static void set_pending_2l(struct xr *r, uint32_t vcpu, uint32_t port)
{
    uint32_t w = port / XC_BITS_PER_WORD;
    xen_ulong_t b = bit_of(port);
    if (XC_OR(&r->si->evtchn_pending[w], b) & b)
        return;
    STAT(r, raised);
    if (!(XC_LOAD(&r->si->evtchn_mask[w]) & b))
        raise_sel_2l(r, vcpu, port);
}

static void unmask_2l(struct xr *r, uint32_t vcpu, uint32_t port)
{
    uint32_t w = port / XC_BITS_PER_WORD;
    xen_ulong_t b = bit_of(port);
#ifdef XR_BROKEN_UNMASK
    XC_AND(&r->si->evtchn_mask[w], ~b);
    (void)vcpu;
#else
    if ((XC_AND(&r->si->evtchn_mask[w], ~b) & b) && (XC_LOAD(&r->si->evtchn_pending[w]) & b)) {
        STAT(r, unmask_raises);
        raise_sel_2l(r, vcpu, port);
    }
#endif
}

/* ---- FIFO --------------------------------------------------------------- */

static struct xr_queue *queue(struct xr *r, uint32_t vcpu, uint32_t prio)
{
    return &r->queues[vcpu * EVTCHN_FIFO_MAX_QUEUES + prio];
}

/* Locks the queue `port` was last linked on; NULL after 3 changes. */
static struct xr_queue *lock_old_queue(struct xr *r, uint32_t port)
{
    struct xr_chan *c = &r->chan[port];
    for (int attempt = 0; attempt < 3; attempt++) {
        struct xr_queue *old =
            queue(r, __atomic_load_n(&c->last_vcpu, __ATOMIC_ACQUIRE),
                  __atomic_load_n(&c->last_priority, __ATOMIC_ACQUIRE));
        xc_lock(&old->lock);
        struct xr_queue *now =
            queue(r, __atomic_load_n(&c->last_vcpu, __ATOMIC_ACQUIRE),
                  __atomic_load_n(&c->last_priority, __ATOMIC_ACQUIRE));
        if (old == now)
            return old;
        xc_unlock(&old->lock);
    }
    STAT(r, lost_queue_changes);
    return NULL;
}

/* 1 linked, 0 the tail is not linked, -1 the word changed under us. */
static int try_set_link(event_word_t *word, event_word_t *w, uint32_t link)
{
    if (!(*w & XC_LINKED))
        return 0;
    event_word_t old = *w;
    event_word_t desired = (old & ~(XC_BUSY | (event_word_t)EVTCHN_FIFO_LINK_MASK)) | link;
    if (XC_CAS(word, w, desired))
        return 1;
    return -1;
}

/* Writes `link` into the tail's LINK iff the tail is still LINKED. */
static int set_link(struct xr *r, event_word_t *word, uint32_t link)
{
    event_word_t w = XC_LOAD(word);
    int ret = try_set_link(word, &w, link);
    if (ret >= 0)
        return ret;
    /* Hold the guest's conditional unmask off the word. */
    XC_OR(word, XC_BUSY);
    w = XC_LOAD(word);
    for (int attempt = 0; attempt < 4; attempt++) {
        ret = try_set_link(word, &w, link);
        if (ret >= 0) {
            if (ret == 0)
                XC_AND(word, ~XC_BUSY);
            return ret;
        }
    }
    /* Xen reports "not linked" and carries on as if linked. */
    STAT(r, link_gave_up);
    XC_AND(word, ~XC_BUSY);
    return 1;
}

static void link_fifo(struct xr *r, uint32_t vcpu, uint32_t port)
{
    event_word_t *word = &r->words[port];
    event_word_t w = XC_LOAD(word);
    if ((w & XC_MASKED) || (w & XC_LINKED))
        return;
    struct xr_chan *c = &r->chan[port];
    /* A priority change races a raise: the event may come once on the old. */
    uint32_t prio = __atomic_load_n(&c->priority, __ATOMIC_RELAXED);
    struct xr_queue *q = queue(r, vcpu, prio);
    struct xr_queue *old = lock_old_queue(r, port);
    if (!old)
        return;
    if (XC_OR(word, XC_LINKED) & XC_LINKED) {
        xc_unlock(&old->lock);
        return;
    }
    /* It was the old queue's tail: that queue is empty now, and appending
     * to it must not follow this event into the queue it joins. */
    if (old->tail == port)
        old->tail = 0;
    if (old != q) {
        __atomic_store_n(&c->last_vcpu, vcpu, __ATOMIC_RELEASE);
        __atomic_store_n(&c->last_priority, (uint8_t)prio, __ATOMIC_RELEASE);
        xc_unlock(&old->lock);
        xc_lock(&q->lock);
    }
    int linked = 0;
    if (q->tail)
        linked = set_link(r, &r->words[q->tail], port);
    if (!linked)
        XC_STORE(&r->cbs[vcpu].head[prio], port);
    q->tail = port;
    xc_unlock(&q->lock);
    if (!linked && !(XC_OR(&r->cbs[vcpu].ready, 1u << prio) & (1u << prio)))
        mark_events_pending(r, vcpu);
}

static void set_pending_fifo(struct xr *r, uint32_t vcpu, uint32_t port)
{
    if (!(XC_OR(&r->words[port], XC_PENDING) & XC_PENDING))
        STAT(r, raised);
    /* Linked whenever unmasked and not linked, newly pending or not. */
    link_fifo(r, vcpu, port);
}

static void unmask_fifo(struct xr *r, uint32_t vcpu, uint32_t port)
{
    XC_AND(&r->words[port], ~XC_MASKED);
#ifdef XR_BROKEN_UNMASK
    (void)vcpu;
#else
    if (XC_LOAD(&r->words[port]) & XC_PENDING) {
        STAT(r, unmask_raises);
        set_pending_fifo(r, vcpu, port);
    }
#endif
}

/* ---- the operations ------------------------------------------------------ */

static int valid(struct xr *r, uint32_t port)
{
    return port != 0 && port < r->nr_ports;
}

static int op_send(struct xr *r, uint32_t port)
{
    if (!valid(r, port))
        return -EINVAL;
    struct xr_chan *c = &r->chan[port];
    xc_read_lock(&c->lock);
    if (c->state != ECS_IPI) {
        xc_read_unlock(&c->lock);
        return -EINVAL;
    }
    STAT(r, sends);
    uint32_t vcpu = __atomic_load_n(&c->notify_vcpu, __ATOMIC_RELAXED);
    if (r->abi == XR_ABI_2L)
        set_pending_2l(r, vcpu, port);
    else
        set_pending_fifo(r, vcpu, port);
    xc_read_unlock(&c->lock);
    return 0;
}

static int op_unmask(struct xr *r, uint32_t port)
{
    if (!valid(r, port))
        return -EINVAL;
    struct xr_chan *c = &r->chan[port];
    xc_read_lock(&c->lock);
    STAT(r, unmasks);
    uint32_t vcpu = __atomic_load_n(&c->notify_vcpu, __ATOMIC_RELAXED);
    if (r->abi == XR_ABI_2L)
        unmask_2l(r, vcpu, port);
    else
        unmask_fifo(r, vcpu, port);
    xc_read_unlock(&c->lock);
    return 0;
}

static int op_bind_ipi(struct xr *r, uint32_t vcpu, uint32_t *out)
{
    if (vcpu >= r->nr_vcpus)
        return -ENOENT;
    xc_lock(&r->domain_lock);
    for (uint32_t p = 1; p < r->nr_ports; p++) {
        struct xr_chan *c = &r->chan[p];
        if (c->state != ECS_FREE)
            continue;
        xc_write_lock(&c->lock);
        c->state = ECS_IPI;
        __atomic_store_n(&c->notify_vcpu, vcpu, __ATOMIC_RELAXED);
        __atomic_store_n(&c->priority, EVTCHN_FIFO_PRIORITY_DEFAULT, __ATOMIC_RELAXED);
        xc_write_unlock(&c->lock);
        xc_unlock(&r->domain_lock);
        *out = p;
        return 0;
    }
    xc_unlock(&r->domain_lock);
    return -ENOSPC;
}

static int op_close(struct xr *r, uint32_t port)
{
    if (!valid(r, port))
        return -EINVAL;
    struct xr_chan *c = &r->chan[port];
    xc_lock(&r->domain_lock);
    xc_write_lock(&c->lock);
    int rc = -EINVAL;
    if (c->state != ECS_FREE) {
        if (r->abi == XR_ABI_2L)
            XC_AND(&r->si->evtchn_pending[port / XC_BITS_PER_WORD], ~bit_of(port));
        else
            XC_AND(&r->words[port], ~XC_PENDING);
        c->state = ECS_FREE;
        rc = 0;
    }
    xc_write_unlock(&c->lock);
    xc_unlock(&r->domain_lock);
    return rc;
}

static int op_bind_vcpu(struct xr *r, uint32_t port, uint32_t vcpu)
{
    if (!valid(r, port))
        return -EINVAL;
    if (vcpu >= r->nr_vcpus)
        return -ENOENT;
    struct xr_chan *c = &r->chan[port];
    xc_lock(&r->domain_lock);
    xc_write_lock(&c->lock);
    int rc = -EINVAL;
    if (c->state != ECS_FREE) {
        __atomic_store_n(&c->notify_vcpu, vcpu, __ATOMIC_RELAXED);
#ifdef XR_BROKEN_BIND_VCPU
        if (r->abi == XR_ABI_2L)
            XC_AND(&r->si->evtchn_mask[port / XC_BITS_PER_WORD], ~bit_of(port));
        else
            XC_AND(&r->words[port], ~XC_MASKED);
#endif
        rc = 0;
    }
    xc_write_unlock(&c->lock);
    xc_unlock(&r->domain_lock);
    return rc;
}

static int op_set_priority(struct xr *r, uint32_t port, uint32_t priority)
{
    if (r->abi != XR_ABI_FIFO)
        return -ENOSYS;
    if (!valid(r, port))
        return -EINVAL;
    if (priority > EVTCHN_FIFO_PRIORITY_MIN)
        return -EINVAL;
    struct xr_chan *c = &r->chan[port];
    xc_write_lock(&c->lock);
    int rc = -EINVAL;
    if (c->state != ECS_FREE) {
        __atomic_store_n(&c->priority, (uint8_t)priority, __ATOMIC_RELAXED);
        rc = 0;
    }
    xc_write_unlock(&c->lock);
    return rc;
}

/* HYPERVISOR_event_channel_op: Xen's command numbers and argument structs. */
static int event_channel_op(struct xr *r, int cmd, void *arg)
{
    if (!arg)
        return -EFAULT;
    switch (cmd) {
    case EVTCHNOP_send:
        return op_send(r, ((evtchn_send_t *)arg)->port);
    case EVTCHNOP_unmask:
        return op_unmask(r, ((evtchn_unmask_t *)arg)->port);
    case EVTCHNOP_bind_ipi: {
        evtchn_bind_ipi_t *op = arg;
        return op_bind_ipi(r, op->vcpu, &op->port);
    }
    case EVTCHNOP_close:
        return op_close(r, ((evtchn_close_t *)arg)->port);
    case EVTCHNOP_bind_vcpu: {
        evtchn_bind_vcpu_t *op = arg;
        return op_bind_vcpu(r, op->port, op->vcpu);
    }
    case EVTCHNOP_set_priority: {
        evtchn_set_priority_t *op = arg;
        return op_set_priority(r, op->port, op->priority);
    }
    default:
        return -ENOSYS;
    }
}

static void stats(struct xr *r, struct xr_stats *out)
{
    out->sends = __atomic_load_n(&r->stats.sends, __ATOMIC_RELAXED);
    out->raised = __atomic_load_n(&r->stats.raised, __ATOMIC_RELAXED);
    out->kicks = __atomic_load_n(&r->stats.kicks, __ATOMIC_RELAXED);
    out->unmasks = __atomic_load_n(&r->stats.unmasks, __ATOMIC_RELAXED);
    out->unmask_raises = __atomic_load_n(&r->stats.unmask_raises, __ATOMIC_RELAXED);
    out->lost_queue_changes = __atomic_load_n(&r->stats.lost_queue_changes, __ATOMIC_RELAXED);
    out->link_gave_up = __atomic_load_n(&r->stats.link_gave_up, __ATOMIC_RELAXED);
}

/* 1 if `port` is bound, 0 if free, -EINVAL if out of range. */
static int port_bound(struct xr *r, uint32_t port)
{
    if (!valid(r, port))
        return -EINVAL;
    struct xr_chan *c = &r->chan[port];
    xc_read_lock(&c->lock);
    int bound = c->state != ECS_FREE;
    xc_read_unlock(&c->lock);
    return bound;
}

struct xr_ops {
    struct xr *(*new_2l)(struct shared_info *, uint32_t, uint32_t, xc_kick_fn, void *);
    struct xr *(*new_fifo)(event_word_t *, uint32_t, struct evtchn_fifo_control_block *,
                           struct vcpu_info *, uint32_t, xc_kick_fn, void *);
    void (*free)(struct xr *);
    int (*event_channel_op)(struct xr *, int, void *);
    void (*stats)(struct xr *, struct xr_stats *);
    int (*port_bound)(struct xr *, uint32_t);
};

const struct xr_ops XR(ops) = {
    .new_2l = new_2l,
    .new_fifo = new_fifo,
    .free = free_raiser,
    .event_channel_op = event_channel_op,
    .stats = stats,
    .port_bound = port_bound,
};
