//! Exporting spans over OTLP (`[tracing]`): the tracer provider that batches spans and sends
//! them as OTLP/HTTP JSON to a collector, and the `tracing` layer that feeds it.
//!
//! The request path opens debug-level spans (`palaver.request` in the session or the server
//! API, `palaver.forwarded_append` on the owner of a room another node asked for,
//! `palaver.commit` and `palaver.deliver` in the room's committer). With no endpoint configured
//! nothing here runs, the log filter leaves those spans disabled, and they cost a branch each.
//! With one, this layer takes the spans of palaver's crates at debug level whatever the log
//! filter says, so the logs stay as they were.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::Layer;

use crate::config::TracingSection;

/// A `tracing` layer for any subscriber `S` built on the registry.
pub type BoxedLayer<S> = Box<dyn Layer<S> + Send + Sync>;

/// The exporting half: flushed and shut down when dropped, so the last spans leave with the node.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.provider.force_flush();
        let _ = self.provider.shutdown();
    }
}

/// The layer that exports spans as `settings` says, and the handle that keeps the exporter; or
/// `None` when no endpoint is configured. Call it before any tokio runtime exists (the exporter's
/// blocking HTTP client runs a runtime of its own on the export thread).
pub fn layer<S>(settings: &TracingSection, node: &str) -> anyhow::Result<Option<(BoxedLayer<S>, Telemetry)>>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span> + Send + Sync,
{
    if settings.otlp_endpoint.is_empty() {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpJson)
        .with_endpoint(settings.otlp_endpoint.clone())
        .build()?;
    let batches =
        BatchConfigBuilder::default().with_scheduled_delay(Duration::from_millis(settings.export_interval_ms)).build();
    let ratio = f64::from(settings.sample_percent) / 100.0;
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batches).build())
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
                .build(),
        )
        .build();
    let tracer = provider.tracer("palaver");
    // Every palaver crate that opens spans: a forwarded append's span is the cluster's.
    let only_palaver = Targets::new()
        .with_target("actors", tracing::Level::DEBUG)
        .with_target("cluster", tracing::Level::DEBUG)
        .with_target("node", tracing::Level::DEBUG)
        .with_target("store", tracing::Level::DEBUG);
    let layer = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(only_palaver).boxed();
    Ok(Some((layer, Telemetry { provider })))
}
