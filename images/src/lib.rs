//! berth-images (to be written).
