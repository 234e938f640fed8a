//! Audit and oversight: what the quality team uses to prove the record is whole and to see what
//! a rule change would do. Everything here streams over the store with bounded memory.

pub mod dashboard;
pub mod disparity;
pub mod export;
pub mod replay;
pub mod verify;
