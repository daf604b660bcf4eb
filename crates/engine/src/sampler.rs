//! Sampling (placeholder, being written).
