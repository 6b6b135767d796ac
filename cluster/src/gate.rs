//! The cluster port's accept loop and the gate every accepted link passes before it
//! authenticates.
//!
//! ractor_cluster frames node links as a big-endian `u64` length and a protobuf payload, and reads
//! a frame of up to 16 MiB from anyone, with no deadline, before the cookie handshake has said
//! who the peer is. So palaver accepts node links itself (with TLS or without) and hands each to
//! the node server wrapped in a gate that, until the link authenticates:
//! - refuses a frame longer than [`MAX_FRAME`] (the handshake's frames are a few hundred bytes),
//!   a frame that is not a handshake message, and more than [`MAX_FRAMES`] frames;
//! - closes the link when the handshake (TLS and cookie) has not finished within
//!   `cluster.handshake_timeout_ms` of the accept;
//! - holds one of [`MAX_UNAUTHENTICATED`] slots: beyond them new connections are closed at once.
//!
//! The gate learns that a link authenticated from what the node server writes on it: the
//! accepting side sends the `ChallengeAck` of the handshake only after the peer's cookie digest
//! checked out. From then on it passes bytes through untouched.
//!
//! The node server's own listener, which ractor_cluster always starts, is sealed (loopback, a
//! random port, and a TLS acceptor that refuses every handshake: [`super::tls::sealed_acceptor`]),
//! so nothing reaches the node server around the gate.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream, NodeServerMessage};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::warn;

use super::tls::LinkTls;

/// The longest frame a peer may send before it authenticates. A handshake frame carries a node
/// name, a connection string and a digest.
pub const MAX_FRAME: u64 = 64 * 1024;

/// Frames a peer may send before it authenticates: a real one sends its name, at most one
/// client status, and its challenge reply.
pub const MAX_FRAMES: u32 = 8;

/// Links accepted and not yet authenticated, at most; beyond it new connections are closed at
/// once. Real nodes retry, and this bounds what a flood of connections to the cluster port can
/// hold: each slot at most one [`MAX_FRAME`] frame.
pub const MAX_UNAUTHENTICATED: usize = 64;

/// The first bytes of a payload that is `NetworkMessage { auth: ... }`: field 1, length-delimited.
const AUTH_FIELD_TAG: u8 = 0x0a;
/// `AuthenticationMessage { server_ack: ... }`: field 6, length-delimited.
const SERVER_ACK_TAG: u8 = 0x32;

/// Accept node links on `listener` (this node's `cluster.listen`), run the TLS handshake if
/// configured, and hand each link to the node server behind the gate.
pub(super) async fn serve(
    listener: TcpListener,
    tls: Option<Arc<LinkTls>>,
    server: ActorRef<NodeServerMessage>,
    node: String,
    timeout: Duration,
) {
    let slots = Arc::new(Semaphore::new(MAX_UNAUTHENTICATED));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                // Out of file descriptors and the like: do not spin.
                warn!(node = %node, error = %err, "accepting a cluster link failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(node = %node, %peer, "cluster link dropped: {MAX_UNAUTHENTICATED} links are already authenticating");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (tls, server, node) = (tls.clone(), server.clone(), node.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + timeout;
            let link = match tls {
                Some(tls) => match tls.accept(stream, timeout).await {
                    Ok(stream) => GatedLink::tls(stream, peer, slot, deadline, node.clone()),
                    Err(err) => return err.log(&node, &peer.to_string()),
                },
                None => GatedLink::plain(stream, peer, slot, deadline, node.clone()),
            };
            let opened = NodeServerMessage::ConnectionOpenedExternal { stream: Box::new(link), is_server: true };
            if let Err(err) = server.cast(opened) {
                warn!(node = %node, %peer, error = %err, "cluster link dropped: the node server is gone");
            }
        });
    }
}

/// An accepted link on its way to the node server: its two halves and the gate they share.
struct GatedLink {
    read: BoxRead,
    write: BoxWrite,
    peer: SocketAddr,
}

impl GatedLink {
    fn plain(
        stream: TcpStream,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        deadline: Instant,
        node: String,
    ) -> GatedLink {
        let (read, write) = stream.into_split();
        GatedLink::new(read, write, peer, slot, deadline, node)
    }

    fn tls(
        stream: tokio_rustls::server::TlsStream<TcpStream>,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        deadline: Instant,
        node: String,
    ) -> GatedLink {
        let (read, write) = tokio::io::split(stream);
        GatedLink::new(read, write, peer, slot, deadline, node)
    }

    fn new<R, W>(
        read: R,
        write: W,
        peer: SocketAddr,
        slot: OwnedSemaphorePermit,
        deadline: Instant,
        node: String,
    ) -> Self
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let shared =
            Arc::new(Shared { authenticated: AtomicBool::new(false), slot: Mutex::new(Some(slot)), peer, node });
        let read = GatedRead {
            inner: read,
            open: false,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            frames: Inbound::default(),
            shared: shared.clone(),
        };
        let write = GatedWrite { inner: write, open: false, frames: Outbound::default(), shared };
        GatedLink { read: Box::new(read), write: Box::new(write), peer }
    }
}

impl ClusterBidiStream for GatedLink {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        (self.read, self.write)
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.peer.to_string())
    }
}

/// What the two halves of one link share.
struct Shared {
    authenticated: AtomicBool,
    /// The link's place among the [`MAX_UNAUTHENTICATED`]: given back when it authenticates or
    /// closes.
    slot: Mutex<Option<OwnedSemaphorePermit>>,
    peer: SocketAddr,
    node: String,
}

impl Shared {
    fn authenticate(&self) {
        self.authenticated.store(true, Ordering::Release);
        self.slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
    }

    fn refuse(&self, reason: String) -> io::Error {
        warn!(node = %self.node, peer = %self.peer, "cluster link closed before authenticating: {reason}");
        io::Error::new(io::ErrorKind::InvalidData, reason)
    }
}

/// The read half: checks what the peer sends until the link authenticates.
struct GatedRead<R> {
    inner: R,
    /// Authenticated (a cached copy of the shared flag).
    open: bool,
    deadline: Pin<Box<Sleep>>,
    frames: Inbound,
    shared: Arc<Shared>,
}

impl<R: AsyncRead + Unpin> AsyncRead for GatedRead<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.open && this.shared.authenticated.load(Ordering::Acquire) {
            this.open = true;
        }
        if this.open {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let err = this.shared.refuse("the handshake did not finish in time (cluster.handshake_timeout_ms)".into());
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, err.to_string())));
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        // A frame begun before the link authenticated is checked to its end by the same rules.
        if let Err(reason) = this.frames.observe(&buf.filled()[before..]) {
            return Poll::Ready(Err(this.shared.refuse(reason)));
        }
        Poll::Ready(Ok(()))
    }
}

/// The write half: watches what the node server answers until it acknowledges the peer's
/// cookie.
struct GatedWrite<W> {
    inner: W,
    open: bool,
    frames: Outbound,
    shared: Arc<Shared>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for GatedWrite<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        if !this.open && this.frames.observe(&buf[..written]) {
            this.open = true;
            this.shared.authenticate();
        }
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a byte stream of length-prefixed frames stands.
#[derive(Default)]
struct Framing {
    header: [u8; 8],
    header_len: usize,
    /// Payload bytes of the current frame still to come (after its header).
    remaining: u64,
    /// Payload bytes of the current frame seen so far.
    seen: u64,
}

/// One step of [`Framing::feed`].
enum Step {
    /// A byte of a header.
    HeaderByte,
    /// A header completed: the payload's length.
    Header(u64),
    /// A payload byte at this offset.
    Payload(u64, u8),
}

impl Framing {
    /// Feed one byte.
    fn feed(&mut self, byte: u8) -> Step {
        if self.remaining > 0 {
            self.remaining -= 1;
            let at = self.seen;
            self.seen += 1;
            return Step::Payload(at, byte);
        }
        self.header[self.header_len] = byte;
        self.header_len += 1;
        if self.header_len < self.header.len() {
            return Step::HeaderByte;
        }
        self.header_len = 0;
        self.seen = 0;
        self.remaining = u64::from_be_bytes(self.header);
        Step::Header(self.remaining)
    }
}

/// The rules for what a peer sends before it authenticates.
#[derive(Default)]
struct Inbound {
    framing: Framing,
    frames: u32,
}

impl Inbound {
    /// Check bytes as they arrive; the error says why the link must close.
    fn observe(&mut self, bytes: &[u8]) -> Result<(), String> {
        for &byte in bytes {
            match self.framing.feed(byte) {
                Step::Header(len) => {
                    self.frames += 1;
                    if self.frames > MAX_FRAMES {
                        return Err(format!("more than {MAX_FRAMES} frames before authenticating"));
                    }
                    if len > MAX_FRAME {
                        return Err(format!("a frame of {len} bytes before authenticating (at most {MAX_FRAME})"));
                    }
                    if len == 0 {
                        return Err("an empty frame before authenticating".into());
                    }
                }
                Step::Payload(0, byte) if byte != AUTH_FIELD_TAG => {
                    return Err("a message other than the handshake before authenticating".into());
                }
                Step::HeaderByte | Step::Payload(..) => {}
            }
        }
        Ok(())
    }
}

/// Finds the node server's `ChallengeAck` among the frames it writes.
#[derive(Default)]
struct Outbound {
    framing: Framing,
    /// Whether the current frame's payload started with the auth field tag.
    auth: bool,
    /// The auth field's length varint: still being read.
    in_length: bool,
}

impl Outbound {
    /// Whether these bytes completed the start of a `ChallengeAck` frame.
    fn observe(&mut self, bytes: &[u8]) -> bool {
        for &byte in bytes {
            match self.framing.feed(byte) {
                Step::Header(_) => {
                    self.auth = false;
                    self.in_length = false;
                }
                Step::Payload(0, byte) => {
                    self.auth = byte == AUTH_FIELD_TAG;
                    self.in_length = self.auth;
                }
                Step::HeaderByte => {}
                Step::Payload(_, byte) if self.auth && self.in_length => {
                    // Varint bytes carry a continuation bit.
                    self.in_length = byte & 0x80 != 0;
                }
                Step::Payload(_, byte) if self.auth => {
                    if byte == SERVER_ACK_TAG {
                        return true;
                    }
                    self.auth = false;
                }
                Step::Payload(..) => {}
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u64).to_be_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    /// `NetworkMessage { auth: AuthenticationMessage { <field>: <body> } }`.
    fn auth(field: u8, body: &[u8]) -> Vec<u8> {
        let mut inner = vec![(field << 3) | 2, body.len() as u8];
        inner.extend_from_slice(body);
        let mut out = vec![AUTH_FIELD_TAG];
        // Long enough to need a two-byte varint.
        if inner.len() >= 128 {
            out.extend_from_slice(&[(inner.len() as u8 & 0x7f) | 0x80, (inner.len() >> 7) as u8]);
        } else {
            out.push(inner.len() as u8);
        }
        out.extend_from_slice(&inner);
        out
    }

    #[test]
    fn handshake_frames_pass_byte_by_byte() {
        let mut inbound = Inbound::default();
        let bytes = [frame(&auth(1, b"\x0a\x05n1@lo")), frame(&auth(5, &[0x08, 0x01, 0x12, 0x01, 0x00]))].concat();
        for byte in bytes {
            inbound.observe(&[byte]).unwrap();
        }
    }

    #[test]
    fn oversized_empty_foreign_and_too_many_frames_are_refused() {
        let mut inbound = Inbound::default();
        let err = inbound.observe(&(16u64 << 20).to_be_bytes()).unwrap_err();
        assert!(err.contains("16777216"), "{err}");
        assert!(Inbound::default().observe(&MAX_FRAME.to_be_bytes()).is_ok());
        assert!(Inbound::default().observe(&0u64.to_be_bytes()).is_err());
        // NetworkMessage { node: ... } (field 2).
        assert!(Inbound::default().observe(&frame(&[0x12, 0x00])).is_err());
        let mut inbound = Inbound::default();
        let name = frame(&auth(1, b"\x0a\x01x"));
        for _ in 0..MAX_FRAMES {
            inbound.observe(&name).unwrap();
        }
        assert!(inbound.observe(&name).is_err());
    }

    #[test]
    fn the_challenge_ack_opens_the_gate_and_nothing_else_does() {
        let status = frame(&auth(2, &[0x08, 0x00]));
        let challenge = frame(&auth(4, &[0x0a, 0x02, b'n', b'2', 0x18, 0x07]));
        // A challenge long enough for a two-byte length varint, whose bytes include 0x32.
        let long = frame(&auth(4, &[0x32; 200][..126]));
        let ack = frame(&auth(6, &[0x0a, 0x10, 0x32, 0x32]));
        let mut outbound = Outbound::default();
        assert!(!outbound.observe(&[status, challenge, long].concat()));
        // Split anywhere, the ack is still found.
        for split in 0..ack.len() {
            let mut outbound = Outbound::default();
            let first = outbound.observe(&ack[..split]);
            let second = outbound.observe(&ack[split..]);
            assert!(first || second, "split at {split}");
        }
        // A node message that happens to hold the same bytes is not an ack.
        assert!(!Outbound::default().observe(&frame(&[0x12, 0x02, 0x32, 0x00])));
    }
}
