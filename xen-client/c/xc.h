/*
 * Shared by guest.c and raiser.c: Xen's public headers, atomics, a small
 * spinlock and the name-prefix macro that lets build.rs compile a file more
 * than once (a correct build and deliberately broken ones) into one binary.
 */
#ifndef XC_H
#define XC_H

/* Xen's public headers use uint8_t..uint64_t without including <stdint.h>. */
#include <stddef.h>
#include <stdint.h>

#if defined(__has_include)
#if !__has_include(<xen/xen.h>) || !__has_include(<xen/event_channel.h>)
#error "Xen's public headers are missing: apt-get install libxen-dev"
#endif
#endif

#include <xen/xen.h>
#include <xen/event_channel.h>

#include <errno.h>
#include <sched.h>

#define XC_CAT2(a, b) a##b
#define XC_CAT(a, b) XC_CAT2(a, b)

#define XC_PENDING (1u << EVTCHN_FIFO_PENDING)
#define XC_MASKED (1u << EVTCHN_FIFO_MASKED)
#define XC_LINKED (1u << EVTCHN_FIFO_LINKED)
#define XC_BUSY (1u << EVTCHN_FIFO_BUSY)
#define XC_BITS_PER_WORD (sizeof(xen_ulong_t) * 8)

/* Every access to memory shared with the other party is one of these. */
#define XC_LOAD(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define XC_STORE(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define XC_XCHG(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define XC_OR(p, v) __atomic_fetch_or((p), (v), __ATOMIC_SEQ_CST)
#define XC_AND(p, v) __atomic_fetch_and((p), (v), __ATOMIC_SEQ_CST)
/* Compare-exchange: on failure *expected holds the current value. */
#define XC_CAS(p, expected, desired)                                          \
    __atomic_compare_exchange_n((p), (expected), (desired), 0,                \
                                __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST)

static inline void xc_relax(unsigned *spins)
{
    if (++*spins >= 64) {
        *spins = 0;
        sched_yield(); /* the holder may be preempted: 2 cores, many threads */
    } else {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

/* A test-and-test-and-set lock. */
static inline void xc_lock(uint8_t *l)
{
    unsigned spins = 0;
    while (__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(l, __ATOMIC_RELAXED))
            xc_relax(&spins);
    }
}

static inline int xc_trylock(uint8_t *l)
{
    return !__atomic_exchange_n(l, 1, __ATOMIC_ACQUIRE);
}

static inline void xc_unlock(uint8_t *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

/* A reader-writer spinlock: >0 readers, -1 a writer. */
static inline void xc_read_lock(int32_t *l)
{
    unsigned spins = 0;
    int32_t v = __atomic_load_n(l, __ATOMIC_RELAXED);
    for (;;) {
        if (v >= 0 && __atomic_compare_exchange_n(l, &v, v + 1, 1, __ATOMIC_ACQUIRE,
                                                  __ATOMIC_RELAXED))
            return;
        if (v < 0) {
            xc_relax(&spins);
            v = __atomic_load_n(l, __ATOMIC_RELAXED);
        }
    }
}

static inline void xc_read_unlock(int32_t *l)
{
    __atomic_fetch_sub(l, 1, __ATOMIC_RELEASE);
}

static inline void xc_write_lock(int32_t *l)
{
    unsigned spins = 0;
    for (;;) {
        int32_t v = 0;
        if (__atomic_compare_exchange_n(l, &v, -1, 1, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED))
            return;
        xc_relax(&spins);
    }
}

static inline void xc_write_unlock(int32_t *l)
{
    __atomic_store_n(l, 0, __ATOMIC_RELEASE);
}

/* The hypercall gate the guest is given: Xen's HYPERVISOR_event_channel_op. */
typedef int (*xc_hypercall_fn)(void *ctx, int cmd, void *arg);
/* A handler run, for the test's bookkeeping. */
typedef void (*xc_handler_fn)(void *ctx, uint32_t port, uint32_t vcpu);
/* A vCPU to wake (an IPI, or Xen's vcpu_kick). */
typedef void (*xc_kick_fn)(void *ctx, uint32_t vcpu);

#endif
