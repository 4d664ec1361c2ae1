//! `docs/protocol.md` describes the protocol this crate defines: its version, every
//! error code and every close code.

use rollcall_protocol::{CloseCode, ErrorCode, PROTOCOL_VERSION, SUBPROTOCOL};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

#[test]
fn the_document_is_of_this_version() {
    let doc = doc();
    assert!(doc.starts_with(&format!("# Rollcall wire protocol (v{PROTOCOL_VERSION})\n")));
    assert!(doc.contains(&format!("`{SUBPROTOCOL}`")));
}

#[test]
fn every_error_code_is_documented() {
    let doc = doc();
    for code in ErrorCode::ALL {
        assert!(
            doc.contains(&format!("`{}`", code.as_str())),
            "docs/protocol.md does not mention {code}"
        );
    }
}

#[test]
fn every_close_code_is_in_the_close_code_table() {
    let doc = doc();
    let table = doc
        .split("## Close codes")
        .nth(1)
        .expect("a \"Close codes\" section");
    for code in CloseCode::ALL {
        assert!(
            table.contains(&format!("\n| {} |", code.as_u16())),
            "the close code table does not list {code}"
        );
    }
}
