//! How commands reach a host. Everything above this layer speaks shell lines
//! built by the pure command builders; this layer only carries them.
