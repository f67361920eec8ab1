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
#include <xen/errno.h>

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

/* size and alignment of a struct */
#define STRUCT(type)                                          \
    do {                                                      \
        P(#type ".size", sizeof(struct type));                \
        P(#type ".align", _Alignof(struct type));             \
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

    /* The event-channel hypercall: command numbers, states, VIRQs, errors. */
    P("EVTCHNOP_bind_interdomain", EVTCHNOP_bind_interdomain);
    P("EVTCHNOP_bind_virq", EVTCHNOP_bind_virq);
    P("EVTCHNOP_bind_pirq", EVTCHNOP_bind_pirq);
    P("EVTCHNOP_close", EVTCHNOP_close);
    P("EVTCHNOP_send", EVTCHNOP_send);
    P("EVTCHNOP_status", EVTCHNOP_status);
    P("EVTCHNOP_alloc_unbound", EVTCHNOP_alloc_unbound);
    P("EVTCHNOP_bind_ipi", EVTCHNOP_bind_ipi);
    P("EVTCHNOP_bind_vcpu", EVTCHNOP_bind_vcpu);
    P("EVTCHNOP_unmask", EVTCHNOP_unmask);
    P("EVTCHNOP_reset", EVTCHNOP_reset);
    P("EVTCHNOP_init_control", EVTCHNOP_init_control);
    P("EVTCHNOP_expand_array", EVTCHNOP_expand_array);
    P("EVTCHNOP_set_priority", EVTCHNOP_set_priority);
    P("EVTCHNSTAT_closed", EVTCHNSTAT_closed);
    P("EVTCHNSTAT_unbound", EVTCHNSTAT_unbound);
    P("EVTCHNSTAT_interdomain", EVTCHNSTAT_interdomain);
    P("EVTCHNSTAT_pirq", EVTCHNSTAT_pirq);
    P("EVTCHNSTAT_virq", EVTCHNSTAT_virq);
    P("EVTCHNSTAT_ipi", EVTCHNSTAT_ipi);
    P("BIND_PIRQ__WILL_SHARE", BIND_PIRQ__WILL_SHARE);
    P("VIRQ_TIMER", VIRQ_TIMER);
    P("VIRQ_DEBUG", VIRQ_DEBUG);
    P("VIRQ_CONSOLE", VIRQ_CONSOLE);
    P("VIRQ_DOM_EXC", VIRQ_DOM_EXC);
    P("VIRQ_TBUF", VIRQ_TBUF);
    P("VIRQ_DEBUGGER", VIRQ_DEBUGGER);
    P("VIRQ_XENOPROF", VIRQ_XENOPROF);
    P("VIRQ_CON_RING", VIRQ_CON_RING);
    P("VIRQ_PCPU_STATE", VIRQ_PCPU_STATE);
    P("VIRQ_MEM_EVENT", VIRQ_MEM_EVENT);
    P("VIRQ_ARGO", VIRQ_ARGO);
    P("VIRQ_ENOMEM", VIRQ_ENOMEM);
    P("VIRQ_XENPMU", VIRQ_XENPMU);
    P("VIRQ_ARCH_0", VIRQ_ARCH_0);
    P("NR_VIRQS", NR_VIRQS);
    P("DOMID_SELF", DOMID_SELF);
    P("DOMID_FIRST_RESERVED", DOMID_FIRST_RESERVED);
    P("sizeof_domid_t", sizeof(domid_t));
    P("sizeof_evtchn_port_t", sizeof(evtchn_port_t));
    P("XEN_EPERM", XEN_EPERM);
    P("XEN_ENOENT", XEN_ENOENT);
    P("XEN_ESRCH", XEN_ESRCH);
    P("XEN_EAGAIN", XEN_EAGAIN);
    P("XEN_ENOMEM", XEN_ENOMEM);
    P("XEN_EACCES", XEN_EACCES);
    P("XEN_EFAULT", XEN_EFAULT);
    P("XEN_EBUSY", XEN_EBUSY);
    P("XEN_EEXIST", XEN_EEXIST);
    P("XEN_EINVAL", XEN_EINVAL);
    P("XEN_ENOSPC", XEN_ENOSPC);
    P("XEN_ENOSYS", XEN_ENOSYS);
    P("XEN_EOPNOTSUPP", XEN_EOPNOTSUPP);

    /* The argument structures. */
    STRUCT(evtchn_alloc_unbound);
    FIELD(evtchn_alloc_unbound, dom);
    FIELD(evtchn_alloc_unbound, remote_dom);
    FIELD(evtchn_alloc_unbound, port);
    STRUCT(evtchn_bind_interdomain);
    FIELD(evtchn_bind_interdomain, remote_dom);
    FIELD(evtchn_bind_interdomain, remote_port);
    FIELD(evtchn_bind_interdomain, local_port);
    STRUCT(evtchn_bind_virq);
    FIELD(evtchn_bind_virq, virq);
    FIELD(evtchn_bind_virq, vcpu);
    FIELD(evtchn_bind_virq, port);
    STRUCT(evtchn_bind_pirq);
    FIELD(evtchn_bind_pirq, pirq);
    FIELD(evtchn_bind_pirq, flags);
    FIELD(evtchn_bind_pirq, port);
    STRUCT(evtchn_bind_ipi);
    FIELD(evtchn_bind_ipi, vcpu);
    FIELD(evtchn_bind_ipi, port);
    STRUCT(evtchn_close);
    FIELD(evtchn_close, port);
    STRUCT(evtchn_send);
    FIELD(evtchn_send, port);
    STRUCT(evtchn_unmask);
    FIELD(evtchn_unmask, port);
    STRUCT(evtchn_status);
    FIELD(evtchn_status, dom);
    FIELD(evtchn_status, port);
    FIELD(evtchn_status, status);
    FIELD(evtchn_status, vcpu);
    FIELD(evtchn_status, u);
    FIELD(evtchn_status, u.unbound.dom);
    FIELD(evtchn_status, u.interdomain.dom);
    FIELD(evtchn_status, u.interdomain.port);
    FIELD(evtchn_status, u.pirq);
    FIELD(evtchn_status, u.virq);
    STRUCT(evtchn_bind_vcpu);
    FIELD(evtchn_bind_vcpu, port);
    FIELD(evtchn_bind_vcpu, vcpu);
    STRUCT(evtchn_reset);
    FIELD(evtchn_reset, dom);
    STRUCT(evtchn_init_control);
    FIELD(evtchn_init_control, control_gfn);
    FIELD(evtchn_init_control, offset);
    FIELD(evtchn_init_control, vcpu);
    FIELD(evtchn_init_control, link_bits);
    FIELD(evtchn_init_control, _pad);
    STRUCT(evtchn_expand_array);
    FIELD(evtchn_expand_array, array_gfn);
    STRUCT(evtchn_set_priority);
    FIELD(evtchn_set_priority, port);
    FIELD(evtchn_set_priority, priority);

    return ferror(stdout) ? 1 : 0;
}
