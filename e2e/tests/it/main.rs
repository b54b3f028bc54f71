//! The end-to-end tests, in one test binary: the real binaries as separate processes against moto server.

mod pipeline;
