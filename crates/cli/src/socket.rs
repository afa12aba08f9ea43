//! Socket helpers shared by the event loops (`sockeye bench`'s and `sockeye echo`'s).

use std::io;
use std::mem::MaybeUninit;

use mio::{Interest, Registry, Token};
use sockeye::proto::bytes::BytesMut;

/// Reads into the spare capacity of `input`; the number of bytes read. (Reading into a
/// zeroed slice instead would write every byte of the read window once more per read.)
#[allow(unsafe_code)]
pub fn recv(io: &mio::net::TcpStream, input: &mut BytesMut) -> io::Result<usize> {
    let spare: &mut [MaybeUninit<u8>] = input.spare_capacity_mut();
    let n = socket2::SockRef::from(io).recv(spare)?;
    // SAFETY: `recv` wrote `n` bytes to the start of the spare capacity (it returns how
    // many it wrote, at most the slice's length), so the first `len + n` bytes of the
    // buffer are initialized.
    unsafe { input.set_len(input.len() + n) };
    Ok(n)
}

/// Registers `io` for writable events as well while a write waits for room (`wait`), and
/// for readable ones only otherwise; `registered` remembers which, so that nothing is
/// asked of the poll when it does not change. (Registered for writable events always,
/// a loop wakes far more often: every ACK that frees room raises one.)
pub fn want_writable(
    registry: &Registry,
    io: &mut mio::net::TcpStream,
    token: Token,
    wait: bool,
    registered: &mut bool,
) -> io::Result<()> {
    if wait == *registered {
        return Ok(());
    }
    *registered = wait;
    let interest = if wait {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    };
    registry.reregister(io, token, interest)
}
