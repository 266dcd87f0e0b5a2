//! Signal processing for the recorder, pure Rust over slices: nothing here knows about browsers or sockets.
//!
//! - [`resampler`]: any capture rate (8–96 kHz) to the 16 kHz that lands in Kafka, anti-aliased.
//! - [`measure`]: the sine fit the quality tests measure with.

pub mod measure;
pub mod resampler;
