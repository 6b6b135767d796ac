//! A request's trace across nodes: the W3C `traceparent` of a `tracing` span, carried in the
//! inter-node append (`cluster::wire::ForwardedAppend::traceparent`) and adopted on the owner,
//! so a message's spans on the node that took it and on the node that committed it form one
//! trace in whatever collects them (`[tracing]` in cluster.toml; ARCHITECTURE.md, "Tracing").
//!
//! Spans come from `tracing`; the node's subscriber turns them into OpenTelemetry spans only when
//! OTLP export is on. When it is off a span has no OpenTelemetry context, [`traceparent`] is
//! `None` and nothing crosses the wire.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::Context;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// `00-<trace id>-<span id>-<flags>` of `span`, if it belongs to a trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!("00-{}-{}-{:02x}", span_context.trace_id(), span_context.span_id(), span_context.trace_flags().to_u8())
    })
}

/// Make `span` a child of the remote span `traceparent` names; a malformed value is ignored
/// (the span then starts a trace of its own).
pub fn adopt(span: &tracing::Span, traceparent: &str) {
    if let Some(remote) = parse(traceparent) {
        let _ = span.set_parent(Context::new().with_remote_span_context(remote));
    }
}

fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || parts.next().is_some() || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    let flags = TraceFlags::new(u8::from_str_radix(flags, 16).ok()?);
    let context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_parse_and_bad_ones_are_ignored() {
        let good = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(good.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(good.span_id().to_string(), "00f067aa0ba902b7");
        assert!(good.is_sampled() && good.is_remote());
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-xyz-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_span_outside_any_trace_has_no_traceparent() {
        assert_eq!(traceparent(&tracing::Span::none()), None);
    }
}
