//! receiver binary.
fn main() {}
