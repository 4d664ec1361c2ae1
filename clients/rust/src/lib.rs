#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod client;
mod error;
mod event;
mod view;

pub use client::{Client, ConnectionState, Occupancy, Options, Presence, Sample, Session};
pub use error::{Error, Result};
pub use event::{Broadcast, CloseReason, Counts, Entry, Event, RoomEvent, ServerError};
pub use rollcall_protocol::{self as protocol, CloseCode, ErrorCode};
pub use view::{Diff, DiffStream, OnChange};
