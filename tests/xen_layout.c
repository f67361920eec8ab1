/*
 * Prints the sizes, offsets and constants of Xen's 2-level event-channel ABI,
 * taken from Xen's real public headers (Debian: libxen-dev), as `name value`
 * lines. tests/xen_layout.rs compiles and runs this program and compares
 * every line with the Rust side (`evtchn::abi`).
 *
 * Built by the test with:  cc -std=c11 -Wall -Wextra -Werror [-D__XEN_TOOLS__]
 *
 * Xen's public headers use uint8_t..uint64_t without including <stdint.h>, so
 * it must come first. Without __XEN_TOOLS__ the headers present the guest
 * view (interface version 0, NR_EVENT_CHANNELS defined); with it, the tools
 * view (latest interface version, NR_EVENT_CHANNELS not defined). Both must
 * agree with the Rust layouts.
 */

/* Fail with a recognisable marker when the headers are not installed. */
#if defined(__has_include)
#if !__has_include(<xen/xen.h>) || !__has_include(<xen/event_channel.h>)
#error "EVTCHN_XEN_HEADERS_MISSING: <xen/xen.h> or <xen/event_channel.h> not found (apt-get install libxen-dev)"
#endif
#endif

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <xen/xen.h>
#include <xen/event_channel.h>

#define SIZE_OF_FIELD(type, field) sizeof(((type *)0)->field)
#define LEN_OF_FIELD(type, field) \
    (SIZE_OF_FIELD(type, field) / sizeof(((type *)0)->field[0]))

#define P(name, value) printf("%s %zu\n", (name), (size_t)(value))

/* offset and size of a field */
#define FIELD(type, field)                                            \
    do {                                                              \
        P(#type "." #field ".offset", offsetof(struct type, field));  \
        P(#type "." #field ".size", SIZE_OF_FIELD(struct type, field)); \
    } while (0)

/* offset, size, element count and element size of an array field */
#define ARRAY(type, field)                                                 \
    do {                                                                   \
        FIELD(type, field);                                                \
        P(#type "." #field ".len", LEN_OF_FIELD(struct type, field));      \
        P(#type "." #field ".elem_size",                                   \
          sizeof(((struct type *)0)->field[0]));                           \
    } while (0)

int main(void)
{
    /* constants */
    P("sizeof_xen_ulong_t", sizeof(xen_ulong_t));
    P("bits_per_xen_ulong_t", sizeof(xen_ulong_t) * 8);
    P("XEN_LEGACY_MAX_VCPUS", XEN_LEGACY_MAX_VCPUS);
    P("EVTCHN_2L_NR_CHANNELS", EVTCHN_2L_NR_CHANNELS);
    P("nr_channels_2l_formula",
      sizeof(xen_ulong_t) * sizeof(xen_ulong_t) * 64);
#ifdef NR_EVENT_CHANNELS
    P("NR_EVENT_CHANNELS", NR_EVENT_CHANNELS);
#endif

    /* struct vcpu_info */
    P("vcpu_info.size", sizeof(struct vcpu_info));
    P("vcpu_info.align", _Alignof(struct vcpu_info));
    FIELD(vcpu_info, evtchn_upcall_pending);
    FIELD(vcpu_info, evtchn_upcall_mask);
    FIELD(vcpu_info, evtchn_pending_sel);
    FIELD(vcpu_info, arch);
    FIELD(vcpu_info, time);

    /* struct shared_info */
    P("shared_info.size", sizeof(struct shared_info));
    P("shared_info.align", _Alignof(struct shared_info));
    ARRAY(shared_info, vcpu_info);
    ARRAY(shared_info, evtchn_pending);
    ARRAY(shared_info, evtchn_mask);
    P("shared_info.wc_version.offset",
      offsetof(struct shared_info, wc_version));
    FIELD(shared_info, arch);

    /* FIFO ABI: event word bits and the per-vCPU control block. */
    P("sizeof_event_word_t", sizeof(event_word_t));
    P("EVTCHN_FIFO_PENDING_mask", 1u << EVTCHN_FIFO_PENDING);
    P("EVTCHN_FIFO_MASKED_mask", 1u << EVTCHN_FIFO_MASKED);
    P("EVTCHN_FIFO_LINKED_mask", 1u << EVTCHN_FIFO_LINKED);
    P("EVTCHN_FIFO_BUSY_mask", 1u << EVTCHN_FIFO_BUSY);
    P("EVTCHN_FIFO_LINK_MASK", EVTCHN_FIFO_LINK_MASK);
    P("EVTCHN_FIFO_NR_CHANNELS", EVTCHN_FIFO_NR_CHANNELS);
    P("EVTCHN_FIFO_MAX_QUEUES", EVTCHN_FIFO_MAX_QUEUES);
    P("EVTCHN_FIFO_PRIORITY_DEFAULT", EVTCHN_FIFO_PRIORITY_DEFAULT);
    P("evtchn_fifo_control_block.size", sizeof(struct evtchn_fifo_control_block));
    P("evtchn_fifo_control_block.align", _Alignof(struct evtchn_fifo_control_block));
    FIELD(evtchn_fifo_control_block, ready);
    ARRAY(evtchn_fifo_control_block, head);

    return ferror(stdout) ? 1 : 0;
}
