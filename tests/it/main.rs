//! Integration tests: the gateway in-process on port 0 with real backends.
