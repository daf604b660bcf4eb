//! Model catalog, data directory and pull (placeholder, being written).
