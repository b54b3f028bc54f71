//! worker binary.
fn main() {}
