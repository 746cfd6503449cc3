//! The embedded delivery store (to be written).
