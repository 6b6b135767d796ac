//! Admission on the client port: every accepted connection, plain HTTP or WebSocket, takes one
//! of `limits.max_connections` permits and one of its address's
//! `limits.max_connections_per_address` slots before a byte of it is read, and holds both until
//! it closes. So idle or slow HTTP connections count like WebSockets do, and one address cannot
//! hold every slot of the node. A refused connection gets a short HTTP answer and is closed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Refusals being answered at once, at most; beyond it a refused connection is closed without
/// an answer, so a flood costs bounded memory.
const MAX_REFUSALS_IN_FLIGHT: usize = 64;

/// How long a refused connection may take to send its request and read the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// The node's connection budget.
pub struct Admission {
    permits: Arc<Semaphore>,
    per_address: Mutex<HashMap<IpAddr, usize>>,
    max_per_address: usize,
    refusals: Arc<Semaphore>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// `limits.max_connections` are open.
    NodeFull,
    /// `limits.max_connections_per_address` are open from this address.
    AddressFull,
}

/// An admitted connection's permit and address slot, given back on drop.
pub struct Admitted {
    _permit: OwnedSemaphorePermit,
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self.admission.per_address.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    pub fn new(max_connections: usize, max_per_address: usize) -> Arc<Admission> {
        Arc::new(Admission {
            permits: Arc::new(Semaphore::new(max_connections)),
            per_address: Mutex::new(HashMap::new()),
            max_per_address,
            refusals: Arc::new(Semaphore::new(MAX_REFUSALS_IN_FLIGHT)),
        })
    }

    /// Admit a connection from `ip`, or say why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admitted, Refused> {
        // An IPv4 client on a dual-stack socket is one address however it is written.
        let ip = ip.to_canonical();
        let mut counts = self.per_address.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.get(&ip).copied().unwrap_or(0);
        if count >= self.max_per_address {
            return Err(Refused::AddressFull);
        }
        let permit = self.permits.clone().try_acquire_owned().map_err(|_| Refused::NodeFull)?;
        counts.insert(ip, count + 1);
        Ok(Admitted { _permit: permit, admission: self.clone(), ip })
    }

    /// Answer a refused connection (503 when the node is full: try another node; 429 when its
    /// address is) and close it, unless too many refusals are being answered already.
    pub fn refuse(&self, mut stream: TcpStream, refused: Refused) -> Option<impl std::future::Future<Output = ()>> {
        let slot = self.refusals.clone().try_acquire_owned().ok()?;
        Some(async move {
            let _slot = slot;
            let (status, body): (u16, &[u8]) = match refused {
                Refused::NodeFull => (503, b"node at limits.max_connections; try another node\n"),
                Refused::AddressFull => {
                    (429, b"too many connections from this address (limits.max_connections_per_address)\n")
                }
            };
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                crate::request::respond(&mut stream, status, "text/plain", body).await?;
                // Read what the client sent, so closing does not reset the connection before
                // it reads the answer.
                let mut sink = [0u8; 1024];
                let mut left = crate::request::MAX_HEAD_BYTES;
                while left > 0 {
                    match stream.read(&mut sink).await? {
                        0 => break,
                        n => left = left.saturating_sub(n),
                    }
                }
                std::io::Result::Ok(())
            })
            .await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_address_and_come_back() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admission.admit(a).unwrap();
        let _a2 = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).err(), Some(Refused::AddressFull));
        // The same address written as IPv4-mapped IPv6 is the same address.
        assert_eq!(admission.admit("::ffff:10.0.0.1".parse().unwrap()).err(), Some(Refused::AddressFull));
        let _b1 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).err(), Some(Refused::NodeFull));
        drop(a1);
        let _b2 = admission.admit(b).unwrap();
        assert_eq!(admission.per_address.lock().unwrap().len(), 2);
    }
}
