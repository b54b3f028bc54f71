//! receiver (in progress).
