//! The database delivery store (to be written).
