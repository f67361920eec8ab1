/*
 * Sizes and offsets of the hypercall argument structs as Xen's headers lay
 * them out, for the Rust side to compare with its own #[repr(C)] copies.
 */
#include "xc.h"

#define N(x) ((uint32_t)(x))

static const uint32_t layout[] = {
    N(sizeof(evtchn_send_t)), N(offsetof(evtchn_send_t, port)),
    N(sizeof(evtchn_close_t)), N(offsetof(evtchn_close_t, port)),
    N(sizeof(evtchn_unmask_t)), N(offsetof(evtchn_unmask_t, port)),
    N(sizeof(evtchn_bind_vcpu_t)), N(offsetof(evtchn_bind_vcpu_t, port)),
    N(offsetof(evtchn_bind_vcpu_t, vcpu)),
    N(sizeof(evtchn_bind_ipi_t)), N(offsetof(evtchn_bind_ipi_t, vcpu)),
    N(offsetof(evtchn_bind_ipi_t, port)),
    N(sizeof(evtchn_set_priority_t)), N(offsetof(evtchn_set_priority_t, port)),
    N(offsetof(evtchn_set_priority_t, priority)),
    N(EVTCHNOP_close), N(EVTCHNOP_send), N(EVTCHNOP_bind_ipi), N(EVTCHNOP_bind_vcpu),
    N(EVTCHNOP_unmask), N(EVTCHNOP_set_priority),
    N(sizeof(struct shared_info)), N(sizeof(struct vcpu_info)),
    N(sizeof(struct evtchn_fifo_control_block)), N(sizeof(event_word_t)),
};

/* Copies up to `n` figures into `out`; returns how many there are. */
uint32_t xc_abi_layout(uint32_t *out, uint32_t n)
{
    uint32_t total = (uint32_t)(sizeof(layout) / sizeof(layout[0]));
    for (uint32_t i = 0; i < n && i < total; i++)
        out[i] = layout[i];
    return total;
}
