//! berth-controller (to be written).
