//! Where the memory of an idle connection goes: the README's server (as
//! `examples/echo_server.rs`, current-thread runtime, the system allocator) with a global
//! allocator that counts the live allocations of each size and alignment. Once `N`
//! connections are open (and 2 s later), it prints what was allocated per connection,
//! and with glibc what its heap holds per connection in use and free (`mallinfo2`): the
//! free part is what glibc could not hand out again, such as the slop around
//! `memalign`ed blocks.
//!
//! ```text
//! cargo run --release -p sockeye --example idle_census -- 127.0.0.1:9300 10000 &
//! target/release/sockeye bench --idle 10000 --duration 6 ws://127.0.0.1:9300/
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use sockeye::{ServerConfig, WebSocketServer};

/// Sizes are counted in 8-byte classes up to this many classes (the last takes all larger).
const CLASSES: usize = 512;

/// Live allocations per 8-byte size class, with the alignment Rust asks for (up to 16: what
/// malloc gives anyway) and over it (`memalign`).
static PLAIN: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];
static ALIGNED: [AtomicI64; CLASSES] = [const { AtomicI64::new(0) }; CLASSES];

fn count(layout: Layout, delta: i64) {
    let class = (layout.size() / 8).min(CLASSES - 1);
    let table = if layout.align() > 16 {
        &ALIGNED
    } else {
        &PLAIN
    };
    table[class].fetch_add(delta, Ordering::Relaxed);
}

/// The system allocator, counting.
struct Census;

// SAFETY: every method forwards to `System` with the caller's arguments unchanged (so
// `System`'s guarantees are this allocator's), and only updates counters besides, which
// allocates nothing.
unsafe impl GlobalAlloc for Census {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout, 1);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(layout, -1);
        // SAFETY: `ptr` was allocated by `System` (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(layout, -1);
        // `realloc`'s contract: `new_size`, rounded up to `layout.align()`, fits an isize.
        if let Ok(new) = Layout::from_size_align(new_size, layout.align()) {
            count(new, 1);
        }
        // SAFETY: as for `dealloc`, and the caller's contract on `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Census = Census;

/// The counters now: `(class, aligned, live allocations)`.
fn snapshot() -> Vec<(usize, bool, i64)> {
    let mut out = Vec::with_capacity(2 * CLASSES);
    for class in 0..CLASSES {
        out.push((class, false, PLAIN[class].load(Ordering::Relaxed)));
        out.push((class, true, ALIGNED[class].load(Ordering::Relaxed)));
    }
    out
}

/// glibc's heap in use and free, in bytes (`mallinfo2`'s `uordblks` and `fordblks`).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap() -> Option<(usize, usize)> {
    #[repr(C)]
    struct Mallinfo2 {
        arena: usize,
        ordblks: usize,
        smblks: usize,
        hblks: usize,
        hblkhd: usize,
        usmblks: usize,
        fsmblks: usize,
        uordblks: usize,
        fordblks: usize,
        keepcost: usize,
    }
    unsafe extern "C" {
        fn mallinfo2() -> Mallinfo2;
    }
    // SAFETY: `mallinfo2` (glibc 2.33 and later) takes nothing and returns this struct by
    // value, laid out as declared (ten `size_t`, `malloc.h`); it only reads the
    // allocator's statistics.
    let info = unsafe { mallinfo2() };
    Some((info.uordblks, info.fordblks))
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap() -> Option<(usize, usize)> {
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, count] = &args[..] else {
        return Err("usage: idle_census LISTEN_ADDR CONNECTIONS".into());
    };
    let n: usize = count.parse()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = WebSocketServer::bind(listen.as_str(), ServerConfig::default()).await?;
        println!("idle_census listening on ws://{}", server.local_addr());
        let before = (snapshot(), heap());
        let mut open = 0;
        while let Some(accepted) = server.accept().await {
            let Ok((mut ws, _request)) = accepted else {
                continue;
            };
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if message.is_text() || message.is_binary() {
                        let _ = ws.send(message).await;
                    }
                }
            });
            open += 1;
            if open == n {
                tokio::time::sleep(Duration::from_secs(2)).await;
                report(n, &before, (snapshot(), heap()));
            }
        }
        Ok(())
    })
}

/// The allocation counters and glibc's heap figures at one moment.
type Reading = (Vec<(usize, bool, i64)>, Option<(usize, usize)>);

fn report(n: usize, before: &Reading, after: Reading) {
    let per = |delta: i64| delta as f64 / n as f64;
    let mut total = 0.0;
    println!("live allocations per connection ({n} connections):");
    for ((class, aligned, was), (_, _, now)) in before.0.iter().zip(&after.0) {
        let each = per(now - was);
        if each >= 0.5 {
            let size = class * 8;
            let kind = if *aligned { "over-aligned " } else { "" };
            println!("  {each:.2} x {kind}{size}-{} B", size + 7);
            total += each * size as f64;
        }
    }
    println!("  about {total:.0} B requested per connection");
    if let (Some((used0, free0)), Some((used1, free1))) = (before.1, after.1) {
        println!(
            "glibc heap per connection: {:.0} B in use (chunk headers included), {:.0} B free",
            per(used1 as i64 - used0 as i64),
            per(free1 as i64 - free0 as i64)
        );
    }
}
