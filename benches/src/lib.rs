//! Shared helpers for Rollcall's benchmarks.
