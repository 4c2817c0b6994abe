//! OpenTelemetry export (cargo feature `otel`): a job's span reaches the
//! exporter with its attributes, as a child of its worker's span. Its own
//! binary, because it installs a global `tracing` subscriber.

mod common;

use common::*;
use lkagent::proto::JobStatus;
use lkagent::telemetry::otel;
use lkagent_devserver::DispatchRequest;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;

fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[actix_rt::test]
async fn a_jobs_span_is_exported_with_its_attributes_under_its_workers_span() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(otel::layer(&provider));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber");

    let server = devserver().await;
    let worker = worker(
        options(&server).agent_name("traced"),
        lkagent::demo::DemoAgent,
    );
    let worker_id = registered(&worker).await;
    let job = server
        .dispatch(
            DispatchRequest::room("traced-room")
                .agent_name("traced")
                .metadata(r#"{"duration_ms": 10}"#),
        )
        .await
        .unwrap();
    let done = wait_final(&server, &job.id).await;
    assert_eq!(done.updates.last().unwrap().status, JobStatus::JsSuccess);
    // the spans end when the job leaves the worker and the worker stops
    // `stop` resolves once the actor, and with it its span, is dropped
    worker.stop().await;
    provider.force_flush().expect("flushed");

    let spans = exporter.get_finished_spans().expect("spans");
    let worker_span = spans
        .iter()
        .find(|s| s.name == "worker")
        .unwrap_or_else(|| panic!("no worker span in {:?}", names(&spans)));
    assert_eq!(
        attribute(worker_span, "agent_name").as_deref(),
        Some("traced")
    );
    assert_eq!(
        attribute(worker_span, "worker_id").as_deref(),
        Some(worker_id.as_str())
    );
    let job_span = spans
        .iter()
        .find(|s| s.name == "job" && attribute(s, "job_id").as_deref() == Some(job.id.as_str()))
        .unwrap_or_else(|| panic!("no job span in {:?}", names(&spans)));
    assert_eq!(attribute(job_span, "room").as_deref(), Some("traced-room"));
    assert_eq!(attribute(job_span, "attempt").as_deref(), Some("1"));
    assert_eq!(attribute(job_span, "origin").as_deref(), Some("server"));
    assert_eq!(
        job_span.parent_span_id,
        worker_span.span_context.span_id(),
        "the job's span is a child of its worker's"
    );
    assert_eq!(
        job_span.span_context.trace_id(),
        worker_span.span_context.trace_id()
    );
    // every state change is an event in the job's span
    let states: Vec<String> = job_span
        .events
        .iter()
        .filter_map(|e| {
            e.attributes
                .iter()
                .find(|kv| kv.key.as_str() == "state")
                .map(|kv| kv.value.to_string())
        })
        .collect();
    for state in ["offered", "accepted", "starting", "running", "succeeded"] {
        assert!(
            states.iter().any(|s| s == state),
            "{state} missing from {states:?}"
        );
    }
}

fn names(spans: &[opentelemetry_sdk::trace::SpanData]) -> Vec<String> {
    spans.iter().map(|s| s.name.to_string()).collect()
}
