//! Tracing (`[tracing]`): a message sent on one node into a room another node owns leaves one
//! trace at a local OTLP collector — the request's span on the node that took it, then, on the
//! owner, the forwarded append, the commit and the delivery, each the child of the one before,
//! joined across nodes by the `traceparent` the inter-node append carries.

use std::time::{Duration, Instant};

use anyhow::ensure;
use tests::cluster::{Cluster, ClusterOptions};
use tests::otlp::{Collector, ReceivedSpan};
use tests::{Client, Encoding};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_one_trace_across_nodes() -> anyhow::Result<()> {
    let collector = Collector::start().await?;
    let options = ClusterOptions {
        env: vec![
            ("TRACING__OTLP_ENDPOINT".into(), collector.endpoint()),
            ("TRACING__EXPORT_INTERVAL_MS".into(), "100".into()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(2, options).await?;
    let result = async {
        let (owner, other) = (cluster.member(0).name.clone(), cluster.member(1).name.clone());
        let (mut ann, _) = Client::user(cluster.node(0), Encoding::Json, "ann").await?;
        let (mut ben, _) = Client::user(cluster.node(1), Encoding::Json, "ben").await?;
        let room = cluster.room_owned_by(&mut ann, 0).await?;
        ben.join(&room).await?;
        ben.say(&room, "traced", "follow me").await?;

        // ben's send: a request span on his node, whose trace continues on the owner.
        let deadline = Instant::now() + Duration::from_secs(15);
        let (request, forwarded, commit, deliver) = loop {
            let spans = collector.spans.lock().await.clone();
            if let Some(found) = one_trace(&spans, &other, &owner) {
                break found;
            }
            ensure!(Instant::now() < deadline, "no complete trace arrived; spans: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        ensure!(request.parent_span_id.is_empty(), "the request starts the trace: {request:?}");
        ensure!(forwarded.parent_span_id == request.span_id, "{forwarded:?} under {request:?}");
        ensure!(commit.parent_span_id == forwarded.span_id, "{commit:?} under {forwarded:?}");
        ensure!(deliver.parent_span_id == commit.span_id, "{deliver:?} under {commit:?}");
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cluster.logs());
    }
    result
}

/// A request span from `origin` and, in the same trace, a forwarded append, a commit and a
/// delivery from `owner`.
fn one_trace(
    spans: &[ReceivedSpan],
    origin: &str,
    owner: &str,
) -> Option<(ReceivedSpan, ReceivedSpan, ReceivedSpan, ReceivedSpan)> {
    let on = |node: &str, name: &str, trace: &str| {
        spans.iter().find(|s| s.node == node && s.name == name && s.trace_id == trace).cloned()
    };
    spans.iter().filter(|s| s.node == origin && s.name == "palaver.request").find_map(|request| {
        let trace = &request.trace_id;
        Some((
            request.clone(),
            on(owner, "palaver.forwarded_append", trace)?,
            on(owner, "palaver.commit", trace)?,
            on(owner, "palaver.deliver", trace)?,
        ))
    })
}
