//! berth-cli (to be written).
