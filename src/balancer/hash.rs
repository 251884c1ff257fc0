//! Consistent hashing with bounded load.
