//! Socket helpers shared by the event loops (`sockeye bench`'s and `sockeye echo`'s).

use std::io;
use std::mem::MaybeUninit;

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
