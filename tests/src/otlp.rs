//! A local OTLP/HTTP collector for the tracing test: it takes `POST /v1/traces` with a JSON body
//! (the OTLP JSON encoding) and keeps every span it receives, with the `service.instance.id`
//! of the node that sent it.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::webhooks::{read_request, respond};

/// A span as received: the node, trace id, span id, parent span id (empty for a root) and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub node: String,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
}

pub struct Collector {
    pub addr: SocketAddr,
    pub spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Collector {
    pub async fn start() -> anyhow::Result<Collector> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let kept = spans.clone();
        let server = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let mut buffer = Vec::new();
                    while let Ok(Some((_, body))) = read_request(&mut stream, &mut buffer).await {
                        if let Ok(export) = serde_json::from_slice::<Value>(&body) {
                            kept.lock().await.extend(spans_of(&export));
                        }
                        if respond(&mut stream, "200 OK").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Collector { addr, spans, server })
    }

    /// The traces URL to configure (`tracing.otlp_endpoint`).
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The spans of one OTLP JSON export request.
fn spans_of(export: &Value) -> Vec<ReceivedSpan> {
    let mut out = Vec::new();
    for resource_spans in export["resourceSpans"].as_array().into_iter().flatten() {
        let node = resource_spans["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|kv| kv["key"] == "service.instance.id")
            .and_then(|kv| kv["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_string();
        for scope in resource_spans["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_lowercase();
                out.push(ReceivedSpan {
                    node: node.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                });
            }
        }
    }
    out
}
