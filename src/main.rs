//! The `lesionseg` command line (thin: parses arguments, calls the library).

fn main() {}
