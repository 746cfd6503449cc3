//! The outbound POST of one delivery attempt (to be written).
