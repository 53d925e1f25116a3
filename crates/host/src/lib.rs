//! # ftvm-host — everything that touches the host
//!
//! The crates below this one (`ftvm-cpu`, `ftvm-board`, `ftvm-replay`,
//! `ftvm-ft`, `ftvm-node`) are pure: they never read a clock, open a file
//! or a socket, or start a thread, and clippy holds them to it. This crate
//! is where the host comes in: the files a machine is built from.

pub mod files;
