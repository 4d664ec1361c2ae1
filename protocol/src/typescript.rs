//! `ts_rs::TS` for the two types whose TypeScript shape is not derived: [`Json`] (any
//! JSON value, kept as text) and [`ErrorCode`] (a string union generated next to it in
//! `protocol.gen.ts`). Only with the `typescript` feature, which the crate's own tests
//! turn on to generate the TypeScript SDK's wire types.

use ts_rs::{Config, TS};

use crate::{ErrorCode, Json};

impl TS for Json {
    type WithoutGenerics = Json;
    type OptionInnerType = Json;

    fn name(_: &Config) -> String {
        "unknown".to_owned()
    }

    fn inline(cfg: &Config) -> String {
        Self::name(cfg)
    }
}

impl TS for ErrorCode {
    type WithoutGenerics = ErrorCode;
    type OptionInnerType = ErrorCode;

    /// `protocol.gen.ts` declares `ServerErrorCode` from [`ErrorCode::ALL`].
    fn name(_: &Config) -> String {
        "ServerErrorCode".to_owned()
    }

    fn inline(cfg: &Config) -> String {
        Self::name(cfg)
    }
}
