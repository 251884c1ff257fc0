//! The PROXY protocol (v1 text and v2 binary) from an L4 balancer.
