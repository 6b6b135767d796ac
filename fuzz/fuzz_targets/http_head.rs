//! The client port's request head (`node::http_head`): read off a stream that delivers the
//! input in pieces of a size the input chooses, then parsed. The head is bounded, ends the
//! request, and head and rest together are exactly what was read.
#![no_main]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;
use node::http_head::{parse, read_head, MAX_HEADERS, MAX_HEAD_BYTES};
use tokio::io::{AsyncRead, ReadBuf};

/// Delivers `data` at most `piece` bytes per read.
struct Pieces<'a> {
    data: &'a [u8],
    piece: usize,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.piece.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&piece, data)) = input.split_first() else { return };
    let mut stream = Pieces { data, piece: usize::from(piece).max(1) };
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    match runtime.block_on(read_head(&mut stream)) {
        Ok(Some((head, rest))) => {
            assert!(head.ends_with(b"\r\n\r\n"));
            assert!(head.len() <= MAX_HEAD_BYTES + 1024, "a head of {} bytes", head.len());
            let read = [head.as_slice(), rest.as_slice()].concat();
            assert!(data.starts_with(&read));
            // The head's end is the first one in the input.
            let first = data.windows(4).position(|w| w == b"\r\n\r\n").expect("an end") + 4;
            assert_eq!(head.len(), first);
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            if let Some(request) = parse(&head, &mut headers) {
                let path = request.path.unwrap_or("/");
                let _ = path.split_once('?');
                for header in request.headers.iter() {
                    let _ = std::str::from_utf8(header.value);
                }
            }
        }
        Ok(None) => assert!(!data.windows(4).any(|w| w == b"\r\n\r\n") || data.len() > MAX_HEAD_BYTES),
        Err(err) => {
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            assert!(data.len() > MAX_HEAD_BYTES);
        }
    }
});
