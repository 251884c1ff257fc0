//! RFC 9111 rules for a shared cache: pure functions over headers and times.
