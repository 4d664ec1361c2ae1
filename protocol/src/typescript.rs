//! `ts_rs::TS` for the two types whose TypeScript shape is not derived: [`Json`] (any
//! JSON value, kept as text: `unknown`) and [`ErrorCode`] (`ServerErrorCode`, the
//! string union generated next to it in `protocol.gen.ts` from [`ErrorCode::ALL`]).
//! Only with the `typescript` feature, which the crate's own tests turn on to
//! generate the TypeScript SDK's wire types.

use ts_rs::{Config, TS};

use crate::{ErrorCode, Json};

/// Implements `TS` for a type named `$name` in TypeScript, declared elsewhere.
macro_rules! named {
    ($ty:ty, $name:literal) => {
        impl TS for $ty {
            type WithoutGenerics = $ty;
            type OptionInnerType = $ty;

            fn name(_: &Config) -> String {
                $name.to_owned()
            }

            fn inline(cfg: &Config) -> String {
                Self::name(cfg)
            }
        }
    };
}

named!(Json, "unknown");
named!(ErrorCode, "ServerErrorCode");
