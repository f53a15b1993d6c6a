//! berth-frontend (to be written).
