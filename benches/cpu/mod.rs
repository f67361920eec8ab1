//! Pins the threads of a two-thread bench to two different CPUs, so that
//! the bench measures what one core's writes cost the other's (cache lines
//! moving between cores), not what the scheduler happens to do with two
//! threads when other work holds a core (put them on one core, where they
//! share its time and no line moves). Linux only; elsewhere, or on a
//! one-CPU machine, pinning does nothing.

#![allow(dead_code)]

/// The CPU of the bench (sending) thread.
pub const SENDER: usize = 0;
/// The CPU of the second thread (vCPU, rebinder, spinner).
pub const OTHER: usize = 1;

/// Pins the calling thread to `cpu`; returns whether it did.
pub fn pin(cpu: usize) -> bool {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        return false;
    }
    set(&[cpu])
}

/// Lets the calling thread run on every CPU again.
pub fn unpin() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let all: Vec<usize> = (0..n).collect();
    let _ = set(&all);
}

#[cfg(target_os = "linux")]
fn set(cpus: &[usize]) -> bool {
    // SAFETY: `cpu_set_t` is a plain bit array for which all zeroes is the
    // empty set; `CPU_SET` stays within it (it ignores out-of-range CPUs);
    // `sched_setaffinity(0, ..)` reads `size_of::<cpu_set_t>()` bytes of
    // `set`, which lives for the whole call, and changes only the calling
    // thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

#[cfg(not(target_os = "linux"))]
fn set(_cpus: &[usize]) -> bool {
    false
}
