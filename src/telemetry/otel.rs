//! OpenTelemetry export (cargo feature `otel`): the worker's and its jobs'
//! spans, as `tracing` records them, sent over OTLP.
//!
//! The worker records spans with `tracing` whether or not this is on: a
//! `worker` span (agent name, instance, worker id) and, under it, a `job`
//! span per job (job id, room, origin, attempt) in which the handler runs,
//! with an event at every change of the job's state. This module adds the
//! [`tracing_opentelemetry`] layer that turns them into OpenTelemetry spans:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//! let (layer, provider) = lkagent::telemetry::otel::otlp("http://collector:4318/v1/traces", "support-bot")?;
//! tracing_subscriber::registry().with(layer).init();
//! // … run the worker; before exiting:
//! provider.shutdown()?;
//! # Ok(()) }
//! ```

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;

/// The instrumentation scope the spans are recorded under.
pub const SCOPE: &str = "lkagent";

/// A tracer provider that batches spans to `exporter`, for a service named
/// `service_name`. Keep it, and `shutdown` it before the process exits so
/// the last spans are sent.
pub fn provider(exporter: impl SpanExporter + 'static, service_name: &str) -> SdkTracerProvider {
    SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build()
}

/// The `tracing` layer that turns spans into OpenTelemetry spans of
/// `provider`.
pub fn layer<S>(
    provider: &SdkTracerProvider,
) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(SCOPE))
}

/// Why OTLP export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the OTLP exporter: {0}")]
pub struct OtlpError(String);

/// An OTLP exporter (HTTP, protobuf) to `endpoint` — the full traces URL,
/// e.g. `http://collector:4318/v1/traces` — and the layer that feeds it.
/// Add the layer to the application's `tracing` subscriber; keep the
/// provider and `shutdown` it before exiting.
pub fn otlp<S>(
    endpoint: &str,
    service_name: &str,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        SdkTracerProvider,
    ),
    OtlpError,
>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| OtlpError(e.to_string()))?;
    let provider = provider(exporter, service_name);
    Ok((layer(&provider), provider))
}
