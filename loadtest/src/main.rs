//! loadtest binary.
fn main() {}
