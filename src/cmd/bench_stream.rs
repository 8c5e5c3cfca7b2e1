//! Streaming benchmarks: drain, latency, fan-out, memory (each with a baseline in the same run).

use crate::cli::{BenchDrainArgs, BenchFanoutArgs, BenchLatencyArgs, BenchMemoryArgs};

/// `walcast bench drain`.
pub async fn drain(_args: BenchDrainArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `walcast bench latency`.
pub async fn latency(_args: BenchLatencyArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `walcast bench fanout`.
pub async fn fanout(_args: BenchFanoutArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}

/// `walcast bench memory`.
pub async fn memory(_args: BenchMemoryArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
