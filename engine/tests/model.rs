//! Model test: random heartbeats, leaves, clock advances, sweeps and reboots against a
//! plain in-memory model (`rollcall_engine::model`, shared with the fuzz target
//! `fuzz/fuzz_targets/replay_model.rs`). After every operation the engine's live view
//! must equal the model's; after a reboot (close, reopen, replay) too.

use proptest::prelude::*;
use rollcall_engine::Layout;
use rollcall_engine::model::{Op, ROOMS, Replay};

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..ROOMS.len(), 1..6u64, any::<u8>(), 1..300u64)
            .prop_map(|(room, client, data, ttl)| Op::Heartbeat { room, client, data, ttl }),
        3 => (0..ROOMS.len(), 1..6u64).prop_map(|(room, client)| Op::Leave { room, client }),
        3 => (0..200u64).prop_map(Op::AdvanceClock),
        2 => Just(Op::Sweep),
        1 => Just(Op::Sync),
        2 => Just(Op::Reboot),
    ]
}

fn run(ops: &[Op], layout: Layout) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut replay = Replay::new(dir.path(), layout).map_err(TestCaseError::fail)?;
    for op in ops {
        replay.apply(op).map_err(TestCaseError::fail)?;
    }
    // The log never holds much more than its live data once compaction caught up.
    replay.finish().map_err(TestCaseError::fail)?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_model_per_group(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops, Layout::PerGroup)?;
    }

    #[test]
    fn engine_matches_model_per_event(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops, Layout::PerEvent)?;
    }
}
