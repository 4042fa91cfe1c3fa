//! The caller's credential: bearer extraction (RFC 6750) and an unverified
//! look at JWT claims (only to bound cache lifetime and label audit events).

pub mod bearer;
pub mod unverified;
