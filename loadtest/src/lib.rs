//! loadtest (in progress).
