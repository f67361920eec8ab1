/*
 * A guest kernel's event-channel code, in the shape of Linux's
 * drivers/xen/events (written here from Xen's and Linux's documented
 * behaviour), over memory that someone else plays the hypervisor for.
 *
 * Both ABIs:
 *
 *  - 2-level: an upcall clears the vCPU's evtchn_upcall_pending, swaps its
 *    evtchn_pending_sel with 0, and for each selected word takes
 *    pending & ~mask; each such port is handled. It repeats while
 *    evtchn_upcall_pending was set again meanwhile.
 *  - FIFO: an upcall swaps the control block's `ready` with 0 and consumes
 *    the highest-priority ready queue one event at a time: the head (its
 *    own copy, or the control block's when it reached the tail last time),
 *    clear LINKED and LINK with a compare-exchange, keep LINK as the next
 *    head, handle the event if it is PENDING and not MASKED.
 *
 * Handling a port: under the port's lock (Linux's irq descriptor lock), if
 * the port's mask bit is clear, test-and-clear PENDING and run the handler.
 *
 * The guest owns its mask bits. Mask: set the bit (under the port's lock,
 * so no handler starts after mask returns), and remember the port as
 * masked. Unmask, as Linux does:
 *
 *  - 2-level: clear the mask bit, then look at the pending bit; if it is
 *    set, set the mask again and ask Xen (EVTCHNOP_unmask raises the event
 *    only on the mask's 1 -> 0).
 *  - FIFO: clear MASKED with a compare-exchange only if neither PENDING nor
 *    BUSY is set; otherwise EVTCHNOP_unmask (Xen relinks a pending event).
 *
 * Defines select deliberately broken variants (negative controls):
 *  XG_BROKEN_UNMASK       unmask clears the mask bit and never asks Xen:
 *                         an event that arrived while masked is lost.
 *  XG_BROKEN_IGNORE_MASK  delivery ignores the mask bit: handlers run on
 *                         ports the guest masked.
 *
 * XG_PREFIX names the variant's exported table (xg_ops for the real one).
 */
#include "xc.h"

#include <stdlib.h>

#ifndef XG_PREFIX
#define XG_PREFIX xg_
#endif
#define XG(name) XC_CAT(XG_PREFIX, name)

enum { XG_ABI_2L = 2, XG_ABI_FIFO = 3 };

struct xg_stats {
    uint64_t handled;         /* handler runs */
    uint64_t on_masked;       /* handler runs on a port the guest had masked */
    uint64_t masks;           /* guest mask operations */
    uint64_t unmasks;         /* guest unmask operations */
    uint64_t unmask_hypercalls; /* of which needed EVTCHNOP_unmask */
    uint64_t upcalls;         /* upcall loops run */
    uint64_t spurious;        /* a port offered but no longer pending */
};

struct xg_vcpu {
    uint8_t lock;                            /* one deliverer per vCPU */
    uint32_t head[EVTCHN_FIFO_MAX_QUEUES];   /* FIFO: local queue heads */
};

struct xg_guest {
    int abi;
    uint32_t nr_ports, nr_vcpus;
    struct shared_info *si;                  /* 2-level */
    event_word_t *words;                     /* FIFO event array */
    struct evtchn_fifo_control_block *cbs;   /* FIFO, one per vCPU */
    struct vcpu_info *vis;                   /* upcall flag (and 2-level sel) */
    xc_hypercall_fn hypercall;
    void *hypercall_ctx;
    xc_handler_fn handler;
    void *handler_ctx;
    uint8_t *port_lock;                      /* per port */
    uint8_t *masked;                         /* per port: the guest masked it */
    struct xg_vcpu *vcpu;
    struct xg_stats stats;                   /* updated atomically */
};

#define STAT(g, field) __atomic_fetch_add(&(g)->stats.field, 1, __ATOMIC_RELAXED)

static struct xg_guest *alloc_guest(uint32_t nr_ports, uint32_t nr_vcpus)
{
    struct xg_guest *g = calloc(1, sizeof(*g));
    if (!g)
        return NULL;
    g->nr_ports = nr_ports;
    g->nr_vcpus = nr_vcpus;
    g->port_lock = calloc(nr_ports ? nr_ports : 1, 1);
    g->masked = calloc(nr_ports ? nr_ports : 1, 1);
    g->vcpu = calloc(nr_vcpus ? nr_vcpus : 1, sizeof(struct xg_vcpu));
    if (!g->port_lock || !g->masked || !g->vcpu) {
        free(g->port_lock);
        free(g->masked);
        free(g->vcpu);
        free(g);
        return NULL;
    }
    return g;
}

static struct xg_guest *new_2l(struct shared_info *si, uint32_t nr_vcpus, uint32_t nr_ports,
                               xc_hypercall_fn hc, void *hc_ctx, xc_handler_fn h, void *h_ctx)
{
    if (!si || nr_vcpus == 0 || nr_vcpus > XEN_LEGACY_MAX_VCPUS ||
        nr_ports > XC_BITS_PER_WORD * XC_BITS_PER_WORD)
        return NULL;
    struct xg_guest *g = alloc_guest(nr_ports, nr_vcpus);
    if (!g)
        return NULL;
    g->abi = XG_ABI_2L;
    g->si = si;
    g->vis = si->vcpu_info;
    g->hypercall = hc;
    g->hypercall_ctx = hc_ctx;
    g->handler = h;
    g->handler_ctx = h_ctx;
    return g;
}

static struct xg_guest *new_fifo(event_word_t *words, uint32_t nr_ports,
                                 struct evtchn_fifo_control_block *cbs, struct vcpu_info *vis,
                                 uint32_t nr_vcpus, xc_hypercall_fn hc, void *hc_ctx,
                                 xc_handler_fn h, void *h_ctx)
{
    if (!words || !cbs || !vis || nr_vcpus == 0 || nr_ports > EVTCHN_FIFO_NR_CHANNELS)
        return NULL;
    struct xg_guest *g = alloc_guest(nr_ports, nr_vcpus);
    if (!g)
        return NULL;
    g->abi = XG_ABI_FIFO;
    g->words = words;
    g->cbs = cbs;
    g->vis = vis;
    g->hypercall = hc;
    g->hypercall_ctx = hc_ctx;
    g->handler = h;
    g->handler_ctx = h_ctx;
    return g;
}

static void free_guest(struct xg_guest *g)
{
    if (!g)
        return;
    free(g->port_lock);
    free(g->masked);
    free(g->vcpu);
    free(g);
}

/* ---- the port's bits ---------------------------------------------------- */

static xen_ulong_t bit_of(uint32_t port)
{
    return (xen_ulong_t)1 << (port % XC_BITS_PER_WORD);
}

static int mask_bit_set(struct xg_guest *g, uint32_t port)
{
    if (g->abi == XG_ABI_2L)
        return (XC_LOAD(&g->si->evtchn_mask[port / XC_BITS_PER_WORD]) & bit_of(port)) != 0;
    return (XC_LOAD(&g->words[port]) & XC_MASKED) != 0;
}

__attribute__((unused)) static int pending_bit_set(struct xg_guest *g, uint32_t port)
{
    if (g->abi == XG_ABI_2L)
        return (XC_LOAD(&g->si->evtchn_pending[port / XC_BITS_PER_WORD]) & bit_of(port)) != 0;
    return (XC_LOAD(&g->words[port]) & XC_PENDING) != 0;
}

static int test_and_clear_pending(struct xg_guest *g, uint32_t port)
{
    if (g->abi == XG_ABI_2L) {
        xen_ulong_t b = bit_of(port);
        return (XC_AND(&g->si->evtchn_pending[port / XC_BITS_PER_WORD], ~b) & b) != 0;
    }
    return (XC_AND(&g->words[port], ~XC_PENDING) & XC_PENDING) != 0;
}

static void set_mask_bit(struct xg_guest *g, uint32_t port)
{
    if (g->abi == XG_ABI_2L)
        XC_OR(&g->si->evtchn_mask[port / XC_BITS_PER_WORD], bit_of(port));
    else
        XC_OR(&g->words[port], XC_MASKED);
}

__attribute__((unused)) static int hypercall_unmask(struct xg_guest *g, uint32_t port)
{
    evtchn_unmask_t op = { .port = port };
    STAT(g, unmask_hypercalls);
    return g->hypercall(g->hypercall_ctx, EVTCHNOP_unmask, &op);
}

/* ---- handling ----------------------------------------------------------- */

/* Runs the handler of `port` if it is unmasked and pending. 1 if it ran. */
static int handle_port(struct xg_guest *g, uint32_t port, uint32_t vcpu)
{
    int ran = 0;
    xc_lock(&g->port_lock[port]);
#ifndef XG_BROKEN_IGNORE_MASK
    if (mask_bit_set(g, port)) {
        /* Left pending: the unmask asks Xen to raise it again. */
        xc_unlock(&g->port_lock[port]);
        return 0;
    }
#endif
    if (test_and_clear_pending(g, port)) {
        if (__atomic_load_n(&g->masked[port], __ATOMIC_RELAXED))
            STAT(g, on_masked);
        STAT(g, handled);
        g->handler(g->handler_ctx, port, vcpu);
        ran = 1;
    } else {
        STAT(g, spurious);
    }
    xc_unlock(&g->port_lock[port]);
    return ran;
}

static uint32_t upcall_2l(struct xg_guest *g, uint32_t vcpu)
{
    struct vcpu_info *vi = &g->vis[vcpu];
    uint32_t handled = 0;
    do {
        XC_STORE(&vi->evtchn_upcall_pending, 0);
        xen_ulong_t sel = XC_XCHG(&vi->evtchn_pending_sel, 0);
        while (sel) {
            unsigned w = (unsigned)__builtin_ctzl(sel);
            sel &= sel - 1;
            xen_ulong_t bits = XC_LOAD(&g->si->evtchn_pending[w]);
#ifndef XG_BROKEN_IGNORE_MASK
            bits &= ~XC_LOAD(&g->si->evtchn_mask[w]);
#endif
            while (bits) {
                uint32_t port = (uint32_t)(w * XC_BITS_PER_WORD) + (uint32_t)__builtin_ctzl(bits);
                bits &= bits - 1;
                if (port != 0 && port < g->nr_ports)
                    handled += (uint32_t)handle_port(g, port, vcpu);
            }
        }
    } while (XC_LOAD(&vi->evtchn_upcall_pending));
    return handled;
}

/* Takes the head of queue `prio` off it and handles it. */
static uint32_t consume_one(struct xg_guest *g, uint32_t vcpu, uint32_t prio, uint32_t *ready)
{
    struct evtchn_fifo_control_block *cb = &g->cbs[vcpu];
    uint32_t *local = &g->vcpu[vcpu].head[prio];
    uint32_t port = *local;
    if (port == 0)
        port = XC_LOAD(&cb->head[prio]); /* reached the tail last time */
    if (port == 0 || port >= g->nr_ports) {
        *ready &= ~(1u << prio);
        *local = 0;
        return 0;
    }
    event_word_t *word = &g->words[port];
    event_word_t w = XC_LOAD(word);
    while (!XC_CAS(word, &w, w & ~(XC_LINKED | (event_word_t)EVTCHN_FIFO_LINK_MASK)))
        ;
    uint32_t next = w & EVTCHN_FIFO_LINK_MASK;
    if (next == 0)
        *ready &= ~(1u << prio); /* the queue is empty */
    *local = next;
    event_word_t now = XC_LOAD(word);
#ifdef XG_BROKEN_IGNORE_MASK
    if (now & XC_PENDING)
#else
    if ((now & XC_PENDING) && !(now & XC_MASKED))
#endif
        return (uint32_t)handle_port(g, port, vcpu);
    return 0;
}

static uint32_t upcall_fifo(struct xg_guest *g, uint32_t vcpu)
{
    struct vcpu_info *vi = &g->vis[vcpu];
    struct evtchn_fifo_control_block *cb = &g->cbs[vcpu];
    uint32_t handled = 0;
    do {
        XC_STORE(&vi->evtchn_upcall_pending, 0);
        uint32_t ready = XC_XCHG(&cb->ready, 0);
        while (ready) {
            uint32_t prio = (uint32_t)__builtin_ctz(ready); /* strict priority */
            handled += consume_one(g, vcpu, prio, &ready);
            ready |= XC_XCHG(&cb->ready, 0);
        }
    } while (XC_LOAD(&vi->evtchn_upcall_pending));
    return handled;
}

/* ---- the exported operations -------------------------------------------- */

/* One upcall of `vcpu`: handler runs, or -EINVAL / -EBUSY (another thread
 * runs this vCPU's upcall). */
static int64_t upcall(struct xg_guest *g, uint32_t vcpu)
{
    if (vcpu >= g->nr_vcpus)
        return -EINVAL;
    if (!xc_trylock(&g->vcpu[vcpu].lock))
        return -EBUSY;
    STAT(g, upcalls);
    uint32_t n = g->abi == XG_ABI_2L ? upcall_2l(g, vcpu) : upcall_fifo(g, vcpu);
    xc_unlock(&g->vcpu[vcpu].lock);
    return n;
}

static int upcall_pending(struct xg_guest *g, uint32_t vcpu)
{
    if (vcpu >= g->nr_vcpus)
        return -EINVAL;
    return XC_LOAD(&g->vis[vcpu].evtchn_upcall_pending) != 0;
}

static int mask(struct xg_guest *g, uint32_t port)
{
    if (port == 0 || port >= g->nr_ports)
        return -EINVAL;
    xc_lock(&g->port_lock[port]);
    set_mask_bit(g, port);
    __atomic_store_n(&g->masked[port], 1, __ATOMIC_RELAXED); /* after the bit */
    STAT(g, masks);
    xc_unlock(&g->port_lock[port]);
    return 0;
}

static int unmask(struct xg_guest *g, uint32_t port)
{
    int rc = 0;
    if (port == 0 || port >= g->nr_ports)
        return -EINVAL;
    xc_lock(&g->port_lock[port]);
    __atomic_store_n(&g->masked[port], 0, __ATOMIC_RELAXED); /* before the bit */
    STAT(g, unmasks);
#ifdef XG_BROKEN_UNMASK
    if (g->abi == XG_ABI_2L)
        XC_AND(&g->si->evtchn_mask[port / XC_BITS_PER_WORD], ~bit_of(port));
    else
        XC_AND(&g->words[port], ~XC_MASKED);
#else
    if (g->abi == XG_ABI_2L) {
        /* Clear first, then look: an event raised in between saw the mask
         * clear and was notified by its raiser; one raised before is
         * pending now, and Xen raises it once the mask goes 1 -> 0 again. */
        xen_ulong_t b = bit_of(port);
        XC_AND(&g->si->evtchn_mask[port / XC_BITS_PER_WORD], ~b);
        if (pending_bit_set(g, port)) {
            set_mask_bit(g, port);
            rc = hypercall_unmask(g, port);
        }
    } else {
        event_word_t *word = &g->words[port];
        event_word_t w = XC_LOAD(word);
        for (;;) {
            if (!(w & XC_MASKED))
                break;
            if (w & XC_PENDING) {
                rc = hypercall_unmask(g, port);
                break;
            }
            /* Fails while Xen holds the word BUSY (it is rewriting LINK). */
            event_word_t old = w & ~XC_BUSY;
            w = old;
            if (XC_CAS(word, &w, old & ~XC_MASKED))
                break;
        }
    }
#endif
    xc_unlock(&g->port_lock[port]);
    return rc;
}

/*
 * Ports the guest has masked whose mask bit is clear: 0 while nobody but the
 * guest's unmask clears a guest's mask. The first such port goes to *first.
 */
static uint32_t check_masks(struct xg_guest *g, uint32_t *first)
{
    uint32_t bad = 0;
    for (uint32_t p = 1; p < g->nr_ports; p++) {
        xc_lock(&g->port_lock[p]);
        if (__atomic_load_n(&g->masked[p], __ATOMIC_RELAXED) && !mask_bit_set(g, p)) {
            if (bad == 0 && first)
                *first = p;
            bad++;
        }
        xc_unlock(&g->port_lock[p]);
    }
    return bad;
}

static int masked_by_guest(struct xg_guest *g, uint32_t port)
{
    if (port >= g->nr_ports)
        return -EINVAL;
    return __atomic_load_n(&g->masked[port], __ATOMIC_RELAXED);
}

static void stats(struct xg_guest *g, struct xg_stats *out)
{
    out->handled = __atomic_load_n(&g->stats.handled, __ATOMIC_RELAXED);
    out->on_masked = __atomic_load_n(&g->stats.on_masked, __ATOMIC_RELAXED);
    out->masks = __atomic_load_n(&g->stats.masks, __ATOMIC_RELAXED);
    out->unmasks = __atomic_load_n(&g->stats.unmasks, __ATOMIC_RELAXED);
    out->unmask_hypercalls = __atomic_load_n(&g->stats.unmask_hypercalls, __ATOMIC_RELAXED);
    out->upcalls = __atomic_load_n(&g->stats.upcalls, __ATOMIC_RELAXED);
    out->spurious = __atomic_load_n(&g->stats.spurious, __ATOMIC_RELAXED);
}

/* Guest-initiated hypercalls, as a guest kernel's bind_ipi/notify/close. */
static int bind_ipi(struct xg_guest *g, uint32_t vcpu, uint32_t *port)
{
    evtchn_bind_ipi_t op = { .vcpu = vcpu, .port = 0 };
    int rc = g->hypercall(g->hypercall_ctx, EVTCHNOP_bind_ipi, &op);
    if (rc == 0)
        *port = op.port;
    return rc;
}

static int send(struct xg_guest *g, uint32_t port)
{
    evtchn_send_t op = { .port = port };
    return g->hypercall(g->hypercall_ctx, EVTCHNOP_send, &op);
}

static int close_port(struct xg_guest *g, uint32_t port)
{
    evtchn_close_t op = { .port = port };
    return g->hypercall(g->hypercall_ctx, EVTCHNOP_close, &op);
}

static int bind_vcpu(struct xg_guest *g, uint32_t port, uint32_t vcpu)
{
    evtchn_bind_vcpu_t op = { .port = port, .vcpu = vcpu };
    return g->hypercall(g->hypercall_ctx, EVTCHNOP_bind_vcpu, &op);
}

/* The table the Rust side calls through (one per compiled variant). */
struct xg_ops {
    struct xg_guest *(*new_2l)(struct shared_info *, uint32_t, uint32_t, xc_hypercall_fn, void *,
                               xc_handler_fn, void *);
    struct xg_guest *(*new_fifo)(event_word_t *, uint32_t, struct evtchn_fifo_control_block *,
                                 struct vcpu_info *, uint32_t, xc_hypercall_fn, void *,
                                 xc_handler_fn, void *);
    void (*free)(struct xg_guest *);
    int64_t (*upcall)(struct xg_guest *, uint32_t);
    int (*upcall_pending)(struct xg_guest *, uint32_t);
    int (*mask)(struct xg_guest *, uint32_t);
    int (*unmask)(struct xg_guest *, uint32_t);
    int (*masked_by_guest)(struct xg_guest *, uint32_t);
    uint32_t (*check_masks)(struct xg_guest *, uint32_t *);
    void (*stats)(struct xg_guest *, struct xg_stats *);
    int (*bind_ipi)(struct xg_guest *, uint32_t, uint32_t *);
    int (*send)(struct xg_guest *, uint32_t);
    int (*close)(struct xg_guest *, uint32_t);
    int (*bind_vcpu)(struct xg_guest *, uint32_t, uint32_t);
};

const struct xg_ops XG(ops) = {
    .new_2l = new_2l,
    .new_fifo = new_fifo,
    .free = free_guest,
    .upcall = upcall,
    .upcall_pending = upcall_pending,
    .mask = mask,
    .unmask = unmask,
    .masked_by_guest = masked_by_guest,
    .check_masks = check_masks,
    .stats = stats,
    .bind_ipi = bind_ipi,
    .send = send,
    .close = close_port,
    .bind_vcpu = bind_vcpu,
};
