//! Agent-era standards (SPEC §6): RFC 9728 metadata and an MCP client's
//! walk through it, step-up, transaction tokens, identity chaining and
//! `may_act`.

#[path = "../common/mod.rs"]
mod common;

mod chain;
mod flows;
mod mcp;
mod metadata;
mod txn;
