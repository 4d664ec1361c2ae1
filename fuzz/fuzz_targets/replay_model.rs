//! Heartbeats, leaves, clock advances, sweeps, syncs and reboots against the plain model
//! of `rollcall_engine::model`, which `engine/tests/model.rs` drives too: after every
//! operation the engine's live view must equal the model's, and after a reboot (close,
//! reopen, replay) too. Only the way operations are picked is this target's own.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use rollcall_engine::Layout;
use rollcall_engine::model::{Op, ROOMS, Replay};

const CLIENTS: u8 = 5;
/// Operations per input at most, so that every iteration stays cheap.
const MAX_OPS: usize = 64;
/// Reboots per input at most: each one closes and reopens sled, the dearest step.
const MAX_REBOOTS: usize = 8;

/// One byte picks the operation, weighted like the model test's strategy; a few more
/// give its arguments.
fn op(u: &mut Unstructured<'_>) -> arbitrary::Result<Op> {
    let room = |u: &mut Unstructured<'_>| -> arbitrary::Result<usize> {
        Ok(usize::from(u8::arbitrary(u)?) % ROOMS.len())
    };
    let client = |u: &mut Unstructured<'_>| -> arbitrary::Result<u64> {
        Ok(1 + u64::from(u8::arbitrary(u)? % CLIENTS))
    };
    Ok(match u8::arbitrary(u)? % 19 {
        0..=7 => Op::Heartbeat {
            room: room(u)?,
            client: client(u)?,
            data: u.arbitrary()?,
            ttl: ttl_ms(u.arbitrary()?),
        },
        8..=10 => Op::Leave {
            room: room(u)?,
            client: client(u)?,
        },
        11..=13 => Op::AdvanceClock(advance_ms(u.arbitrary()?)),
        14 | 15 => Op::Sweep,
        16 => Op::Sync,
        _ => Op::Reboot,
    })
}

// Times are coarse so that random inputs often land exactly on an expiry (`now ==
// expires_at` is still live), with single milliseconds to step just past one.

/// 10 to 300 ms, or 1 to 8 ms.
fn ttl_ms(byte: u8) -> u64 {
    if byte & 0x80 == 0 {
        10 * (1 + u64::from(byte % 30))
    } else {
        1 + u64::from(byte & 7)
    }
}

/// 0 to 150 ms in steps of 10, or 1 ms.
fn advance_ms(byte: u8) -> u64 {
    if byte & 0x80 == 0 {
        10 * u64::from(byte % 16)
    } else {
        1
    }
}

#[derive(Debug)]
struct Input {
    per_event: bool,
    ops: Vec<Op>,
}

impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Input> {
        let per_event = u.arbitrary()?;
        // Every byte left goes to operations. (A derived `Vec` would flip a coin before
        // each element, so random inputs would hold one or two operations.) Reboots past
        // the cap are dropped.
        let mut ops = Vec::new();
        let mut reboots = 0;
        while !u.is_empty() && ops.len() < MAX_OPS {
            let op = op(u)?;
            if op == Op::Reboot {
                if reboots == MAX_REBOOTS {
                    continue;
                }
                reboots += 1;
            }
            ops.push(op);
        }
        Ok(Input { per_event, ops })
    }
}

fn scratch_dir() -> tempfile::TempDir {
    // sled fsyncs on every flush: a RAM-backed directory keeps iterations fast.
    tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .expect("temporary directory")
}

fuzz_target!(|input: Input| {
    let layout = if input.per_event {
        Layout::PerEvent
    } else {
        Layout::PerGroup
    };
    let dir = scratch_dir();
    let mut replay = Replay::with_config(dir.path(), layout, |config| {
        config.cache_capacity(1 << 20)
    })
    .expect("open");
    for op in &input.ops {
        if let Err(mismatch) = replay.apply(op) {
            panic!("{mismatch}");
        }
    }
    if let Err(problem) = replay.finish() {
        panic!("{problem}");
    }
});
