//! The model checks are this package's tests (`tests/`): each explores every interleaving of a
//! protocol by calling the step functions `bulwark-controllers` ships. They live apart from that
//! crate so they build optimised while its own unit tests build fast (see the workspace profiles).
