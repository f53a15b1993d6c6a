//! berth-sandboxd (to be written).
