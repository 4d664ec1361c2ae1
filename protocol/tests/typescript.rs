//! The TypeScript SDK's protocol constants and wire-message types
//! (`clients/typescript/src/protocol.gen.ts`) are generated from this crate: the
//! constants from their values, the message types by `ts_rs::TS` (derived with the
//! crate's `typescript` feature) from the same Rust types serde reads and writes. This
//! test fails when the checked-in file is stale. Regenerate it with
//! `ROLLCALL_BLESS=1 cargo test -p rollcall-protocol --test typescript`.

use std::fmt::Write as _;
use std::path::PathBuf;

use rollcall_protocol::{
    Change, ClientMessage, CloseCode, Entry, ErrorCode, PROTOCOL_VERSION, SUBPROTOCOL,
    ServerMessage, SubscribeMode, WelcomeLimits, limits,
};
use ts_rs::{Config, TS};

/// `export type T = ...;` with its doc comment, laid out one field a line.
fn declaration<T: TS + 'static>(cfg: &Config) -> String {
    let mut out = T::docs().unwrap_or_default();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let decl = T::decl(cfg)
        .replace("{ \n", "{\n")
        .replace(", \n", ",\n")
        .replace(", } | { ", ",\n} | {\n")
        .replace(", };", ",\n};")
        .replace("= { ", "= {\n");
    let mut depth = 0usize;
    for line in decl.lines() {
        let line = line.trim_end();
        let comment = line.starts_with("/**") || line.starts_with(" *");
        if !comment && line.starts_with('}') {
            depth = depth.saturating_sub(1);
        }
        if depth == 0 && line.starts_with("type ") {
            out.push_str("export ");
        }
        for _ in 0..depth {
            out.push_str("  ");
        }
        out.push_str(line);
        out.push('\n');
        if !comment && line.ends_with('{') {
            depth += 1;
        }
    }
    out.push('\n');
    out
}

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
    let _ = writeln!(
        out,
        "/** The most entries a `sample` subscription may ask for (`limit`). */"
    );
    let _ = writeln!(
        out,
        "export const MAX_SAMPLE_LIMIT = {};",
        limits::MAX_SAMPLE_LIMIT
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

    // u64 fields are numbers below 2^53 on the wire (ids, ms timestamps, counts).
    let cfg = Config::new().with_large_int("number");
    out.push_str(
        "\n// Wire messages (docs/protocol.md), from the serde types of the protocol crate.\n\n",
    );
    out.push_str(&declaration::<ClientMessage>(&cfg));
    out.push_str(&declaration::<ServerMessage>(&cfg));
    out.push_str(&declaration::<Entry>(&cfg));
    out.push_str(&declaration::<Change>(&cfg));
    out.push_str(&declaration::<WelcomeLimits>(&cfg));
    out.push_str(&declaration::<SubscribeMode>(&cfg));
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

#[test]
fn protocol_gen_ts_matches_the_crate() {
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
