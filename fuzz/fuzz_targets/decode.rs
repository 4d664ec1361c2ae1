//! `record::decode` on arbitrary bytes never panics and stays within the allocation
//! limits, and whatever decodes re-encodes to the same events.
//!
//! Each input is tried twice: as a whole record, and as the payload of a record with a
//! valid header, so that the fuzzer reaches the postcard parser without having to forge
//! a CRC-32.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rollcall_engine::record;

fuzz_target!(|data: &[u8]| {
    check(data);
    let Ok(len) = u32::try_from(data.len()) else {
        return;
    };
    let mut framed = Vec::with_capacity(record::HEADER_LEN + data.len());
    framed.push(record::VERSION);
    framed.extend_from_slice(&len.to_le_bytes());
    framed.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    framed.extend_from_slice(data);
    check(&framed);
});

fn check(bytes: &[u8]) {
    let events = match record::decode(bytes) {
        Ok(events) => events,
        Err(error) => {
            // Errors end up in logs: formatting them must not panic either.
            let _ = error.to_string();
            return;
        }
    };
    let encoded = record::encode(&events);
    let decoded = record::decode(&encoded);
    assert_eq!(
        decoded.as_ref(),
        Ok(&events),
        "re-encoded record decodes differently"
    );
    // The encoder is canonical: a second round trip changes no byte.
    assert_eq!(record::encode(&events), encoded);
    // Replay tells a torn tail from corruption: every cut of a readable record is torn.
    for cut in 0..bytes.len() {
        let error = record::decode(&bytes[..cut]).expect_err("a cut record decoded");
        assert!(error.is_torn(), "cut at {cut} of {}: {error}", bytes.len());
    }
}
