//! Signed cookies for sticky sessions and read-your-writes (HMAC-SHA256 with the [session] key).
