//! The masking keys of a client's frames (RFC 6455 §5.3): one fresh key per frame.

use super::{Connection, Role};
use crate::limits::Config;

impl Connection {
    /// A fresh masking key on a client (RFC 6455 §5.3), none on a server.
    pub(super) fn new_mask(&self) -> Option<[u8; 4]> {
        new_mask(self.role, &self.config)
    }
}

/// A fresh masking key on a client (RFC 6455 §5.3), none on a server.
#[inline]
pub(super) fn new_mask(role: Role, config: &Config) -> Option<[u8; 4]> {
    match role {
        Role::Client => Some(match &config.generate_mask {
            Some(generate) => generate(),
            None => random_key(),
        }),
        Role::Server => None,
    }
}

/// A masking key from the thread's CSPRNG (`rand`'s `ThreadRng`), drawn 64 keys at a
/// time into a per-thread pool, as `ws` fills its pool with `randomFillSync`. Setting up
/// a draw costs more than the bytes it yields, so one draw serves 64 frames.
fn random_key() -> [u8; 4] {
    use std::cell::RefCell;

    const KEYS: usize = 64;
    thread_local! {
        /// The keys not yet used, from `next` on; empty (`next == KEYS`) at first.
        static POOL: RefCell<([[u8; 4]; KEYS], usize)> = const { RefCell::new(([[0; 4]; KEYS], KEYS)) };
    }
    POOL.with_borrow_mut(|(keys, next)| {
        if *next == KEYS {
            rand::RngCore::fill_bytes(&mut rand::rng(), keys.as_flattened_mut());
            *next = 0;
        }
        let key = keys[*next];
        *next += 1;
        key
    })
}
