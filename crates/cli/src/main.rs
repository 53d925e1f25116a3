//! # ftvm — command line
fn main() {}
