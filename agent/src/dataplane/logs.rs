//! Forwards the BPF programs' aya-log records (rare events only: stale heartbeat, contract
//! mismatch) into the agent's tracing logs, tagged with the program's name.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;
use vipwire_common::programs;

/// A `log::Log` that re-emits records as tracing events with a `bpf_program` field.
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingLogger;

impl log::Log for TracingLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let program = programs::XDP_UPLINK;
        let message = record.args().to_string();
        match record.level() {
            log::Level::Error => tracing::error!(bpf_program = program, "{message}"),
            log::Level::Warn => tracing::warn!(bpf_program = program, "{message}"),
            log::Level::Info => tracing::info!(bpf_program = program, "{message}"),
            log::Level::Debug => tracing::debug!(bpf_program = program, "{message}"),
            log::Level::Trace => tracing::trace!(bpf_program = program, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// Starts forwarding; the task ends when the runtime does.
pub fn spawn_forwarder(ebpf: &mut Ebpf) -> Result<tokio::task::JoinHandle<()>, aya_log::Error> {
    let logger = EbpfLogger::init_with_logger(ebpf, TracingLogger)?;
    Ok(tokio::spawn(async move {
        // SAFETY: the logger owns the ring buffer's fd, which stays open and the same for as
        // long as the AsyncFd (which owns the logger) lives.
        let registered =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) };
        let Ok(mut fd) = registered else {
            tracing::warn!("cannot poll the BPF log ring buffer; BPF logs are not forwarded");
            return;
        };
        loop {
            let Ok(mut guard) = fd.readable_mut().await else {
                return;
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    }))
}
