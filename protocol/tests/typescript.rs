//! The TypeScript SDK's protocol constants (`clients/typescript/src/protocol.gen.ts`)
//! are generated from this crate; this test fails when the checked-in file is stale.
//! Regenerate it with `ROLLCALL_BLESS=1 cargo test -p rollcall-protocol --test typescript`.

use std::fmt::Write as _;
use std::path::PathBuf;

use rollcall_protocol::{
    CloseCode, ErrorCode, PROTOCOL_VERSION, SUBPROTOCOL, WelcomeLimits, limits,
};

fn generated() -> String {
    let mut out = String::new();
    out.push_str(
        "// Generated from the rollcall-protocol crate (protocol/src): do not edit.\n\
         // Regenerate: ROLLCALL_BLESS=1 cargo test -p rollcall-protocol --test typescript\n\n",
    );
    let _ = writeln!(out, "/** The protocol version (docs/protocol.md). */");
    let _ = writeln!(out, "export const PROTOCOL_VERSION = {PROTOCOL_VERSION};");
    let _ = writeln!(out, "/** The WebSocket subprotocol of this version. */");
    let _ = writeln!(out, "export const SUBPROTOCOL = \"{SUBPROTOCOL}\";\n");

    out.push_str("/** Every error code a server sends (`error.code`; over HTTP `error`). */\n");
    out.push_str("export const ERROR_CODES = [\n");
    for code in ErrorCode::ALL {
        let _ = writeln!(out, "  \"{}\",", code.as_str());
    }
    out.push_str("] as const;\n\n");
    out.push_str("/** A server error code. */\n");
    out.push_str("export type ServerErrorCode = (typeof ERROR_CODES)[number];\n\n");

    out.push_str(
        "/** WebSocket close codes the server sends (docs/protocol.md, \"Close codes\"). */\n",
    );
    out.push_str("export const CLOSE = {\n");
    for code in CloseCode::ALL {
        let _ = writeln!(
            out,
            "  {}: {},",
            code.name().unwrap_or("OTHER"),
            code.as_u16()
        );
    }
    out.push_str("} as const;\n\n");
    out.push_str(
        "/** Close codes after which a client must not reconnect with the same credentials. */\n",
    );
    let finals: Vec<String> = CloseCode::ALL
        .iter()
        .filter(|code| code.is_final())
        .map(|code| code.as_u16().to_string())
        .collect();
    let _ = writeln!(
        out,
        "export const FINAL_CLOSE_CODES: readonly number[] = [{}];\n",
        finals.join(", ")
    );

    let defaults = serde_json::to_value(WelcomeLimits::default()).expect("limits serialize");
    out.push_str("/** The limits a `welcome` announces, at their defaults. */\n");
    out.push_str("export const DEFAULT_LIMITS = {\n");
    for (key, value) in defaults.as_object().expect("an object") {
        let _ = writeln!(out, "  {key}: {value},");
    }
    out.push_str("} as const;\n\n");
    let _ = writeln!(
        out,
        "/** The longest `intervalMs` a subscription may ask for. */"
    );
    let _ = writeln!(
        out,
        "export const MAX_INTERVAL_MS = {};",
        limits::MAX_INTERVAL_MS
    );
    let _ = writeln!(out, "/** The longest room name, in bytes of UTF-8. */");
    let _ = writeln!(
        out,
        "export const MAX_ROOM_BYTES = {};",
        limits::DEFAULT_MAX_ROOM_BYTES
    );
    let _ = writeln!(
        out,
        "/** The deepest nesting of arrays and objects in `data`. */"
    );
    let _ = writeln!(
        out,
        "export const MAX_DATA_DEPTH = {};",
        limits::DEFAULT_MAX_DATA_DEPTH
    );
    out
}

#[test]
fn typescript_constants_match_the_crate() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../clients/typescript/src/protocol.gen.ts");
    let expected = generated();
    if std::env::var_os("ROLLCALL_BLESS").is_some() {
        std::fs::write(&path, &expected).expect("write protocol.gen.ts");
        return;
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        actual == expected,
        "{} is not what the protocol crate generates; run \
         `ROLLCALL_BLESS=1 cargo test -p rollcall-protocol --test typescript` and commit it",
        path.display()
    );
}
