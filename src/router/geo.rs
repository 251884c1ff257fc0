//! Client region lookup: CIDR table and forwarded-address rules.
