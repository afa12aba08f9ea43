//! The masking keys of a client's frames (RFC 6455 §5.3): one fresh key per frame, from
//! the source [`Config::generate_mask`](crate::Config::generate_mask) names.

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{Connection, Role};
use crate::limits::MaskSource;

/// A connection's supply of masking keys: for [`MaskSource::Random`], its own generator,
/// made when the first key is needed (a server, which masks nothing, never makes one).
///
/// Boxed: `StdRng` holds a ChaCha block of 64 keys and the cipher's state (some 300
/// bytes), which every idle connection would carry inline.
#[derive(Default)]
pub(super) struct MaskKeys(Option<Box<StdRng>>);

impl MaskKeys {
    /// A fresh key from `source` on a client, none on a server.
    #[inline]
    pub(super) fn next(&mut self, role: Role, source: &MaskSource) -> Option<[u8; 4]> {
        match role {
            Role::Server => None,
            Role::Client => Some(match source {
                MaskSource::Random => {
                    let rng = match &mut self.0 {
                        Some(rng) => rng,
                        None => self.0.insert(seeded()),
                    };
                    rng.next_u32().to_ne_bytes()
                }
                MaskSource::Custom(generate) => generate(),
            }),
        }
    }
}

impl Connection {
    /// A fresh masking key on a client (RFC 6455 §5.3), none on a server.
    #[inline]
    pub(super) fn new_mask(&mut self) -> Option<[u8; 4]> {
        self.mask_keys.next(self.role, &self.config.generate_mask)
    }
}

/// A generator seeded from the operating system's CSPRNG (`getrandom`).
///
/// # Panics
/// If the operating system has no random source to give (as `rand`'s own generators).
#[cold]
fn seeded() -> Box<StdRng> {
    Box::new(StdRng::from_os_rng())
}
