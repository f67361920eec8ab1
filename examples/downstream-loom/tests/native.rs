//! The mailbox natively, single-threaded: a post rings the port once and
//! the upcall takes the message.
#![cfg(not(loom))]

use downstream_loom::Mailbox;
use evtchn::{Bind, Channels, OwnedMemory, TwoLevel};

#[test]
fn post_rings_and_upcall_takes() {
    let ch = Channels::new(TwoLevel::new(OwnedMemory::new(1, 1)), ());
    let mb = Mailbox::new(ch.bind(Bind::Affinity(0)).unwrap());
    mb.post(&ch, 3).unwrap();
    mb.post(&ch, 5).unwrap();
    let mut taken = 0;
    let runs = ch.vcpu(0).unwrap().upcall(|_| taken |= mb.take()).unwrap();
    assert_eq!((runs, taken), (1, 0b10_1000), "two posts, one ring, both taken");
}
