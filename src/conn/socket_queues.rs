//! How many bytes the kernel holds in a TCP socket's queues: what a client sent that we have
//! not read yet, and what we sent that the client has not acknowledged yet.
//!
//! Shutdown needs both: it reads exactly the input that had already arrived when the stop
//! signal came, and it closes a leaving client only once the client has acknowledged every
//! byte (and reports what was still unacknowledged when it gives up).

use std::os::fd::AsFd;

use rustix::ioctl::{Getter, Opcode, ioctl};

/// Bytes received on `socket` and not read yet (`FIONREAD`); 0 if the kernel cannot say.
pub fn unread_input(socket: impl AsFd) -> usize {
    rustix::io::ioctl_fionread(socket).map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Bytes written to `socket` that the peer has not acknowledged yet (`SIOCOUTQ`, which
/// Linux also spells `TIOCOUTQ`); 0 if the kernel cannot say.
pub fn unacknowledged_output(socket: impl AsFd) -> usize {
    // None of the ecosystem's standard crates (socket2, rustix, nix) wraps SIOCOUTQ safely
    // (checked again for rustix 1.1 and socket2 0.6: neither has SIOCOUTQ nor TCP_INFO,
    // whose byte counts would be the other way): rustix wraps FIONREAD, but its generic
    // ioctl needs the caller to vouch for the opcode's argument type. (Small crates such as palaver or linux-io do, but one unsafe block here
    // is less to trust than a niche dependency.) So this module holds the crate's only
    // `unsafe` block.
    //
    // SAFETY: for a socket, SIOCOUTQ (== TIOCOUTQ, 0x5411) writes exactly one `c_int` through
    // its argument pointer, which `Getter<_, c_int>` provides; the descriptor is borrowed
    // for the whole call.
    let queued = unsafe {
        ioctl(
            socket,
            Getter::<{ libc::TIOCOUTQ as Opcode }, libc::c_int>::new(),
        )
    };
    queued.map_or(0, |n| usize::try_from(n).unwrap_or(0))
}
