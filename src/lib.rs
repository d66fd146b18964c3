//! hailuo-gateway: kie.ai's Hailuo image-to-video API behind a typed,
//! streaming gRPC contract (`hailuo.v1.VideoGeneration`).
#![forbid(unsafe_code)]

pub mod callers;
pub mod cli;
pub mod config;
pub mod create;
mod credits;
pub mod downloads;
pub mod error;
mod expiring_map;
pub mod fleet;
pub mod grpc;
pub mod health;
pub mod http;
pub mod http_client;
pub mod hub;
pub mod image;
pub mod kie;
pub mod metrics;
mod otel;
pub mod redis_client;
#[cfg(feature = "sandbox")]
pub mod sandbox;
pub mod shutdown;
#[cfg(feature = "sandbox")]
pub mod simulator;
pub mod startup;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod uploads;

/// The generated `hailuo.v1` messages, client and server.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("hailuo.v1");

    /// Encoded descriptor set of the public contract (with the well-known
    /// types it imports), served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("hailuo_descriptor");
}
