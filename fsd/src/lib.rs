//! berth-fsd (to be written).
