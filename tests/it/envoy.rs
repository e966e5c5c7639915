//! Filled in with the real-Envoy end-to-end test.
