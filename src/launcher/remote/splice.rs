//! [`splice`]: copies bytes both ways between a desktop's RFB stream and a
//! WebSocket's binary messages, until either side ends. The launcher runs it
//! on its VNC route; the gate runs it between that socket and the in-memory
//! pipe its relay reads (see [`super::media`]).
//!
//! Invariant: bytes are passed on as they are, in order, one message per
//! read; nothing is parsed here (the gate's relay frames and limits the
//! browser's messages, the launcher has already authenticated the desktop).

use std::io;

use bytes::{Bytes, BytesMut};
use futures::{Sink, SinkExt, Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read from the desktop at most per message.
const CHUNK: usize = 64 * 1024;

/// Which side ended a splice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpliceEnd {
    /// The desktop's stream reached its end.
    DesktopClosed,
    /// The socket's stream of messages ended.
    SocketClosed,
}

/// Copies `desktop`'s bytes to `outgoing` and `incoming`'s bytes to
/// `desktop` until one side ends or fails.
pub async fn splice<D, In, Out>(
    desktop: D,
    mut incoming: In,
    mut outgoing: Out,
) -> io::Result<SpliceEnd>
where
    D: AsyncRead + AsyncWrite + Unpin,
    In: Stream<Item = io::Result<Bytes>> + Unpin,
    Out: Sink<Bytes, Error = io::Error> + Unpin,
{
    let (mut reader, mut writer) = tokio::io::split(desktop);
    let mut buf = BytesMut::with_capacity(CHUNK);
    loop {
        tokio::select! {
            read = reader.read_buf(&mut buf) => {
                if read? == 0 {
                    let _ = outgoing.close().await;
                    return Ok(SpliceEnd::DesktopClosed);
                }
                outgoing.send(buf.split().freeze()).await?;
                buf.reserve(CHUNK);
            }
            message = incoming.next() => match message {
                Some(bytes) => {
                    writer.write_all(&bytes?).await?;
                    writer.flush().await?;
                }
                None => {
                    let _ = writer.shutdown().await;
                    return Ok(SpliceEnd::SocketClosed);
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;

    #[tokio::test]
    async fn bytes_go_both_ways_in_order_and_a_closed_desktop_ends_it() {
        let (desktop, mut far) = tokio::io::duplex(1024);
        let (to_desktop, incoming) = mpsc::unbounded::<io::Result<Bytes>>();
        let (outgoing, mut from_desktop) = mpsc::unbounded::<Bytes>();
        let outgoing = outgoing.sink_map_err(io::Error::other);
        let task = tokio::spawn(splice(desktop, incoming, outgoing));

        to_desktop
            .unbounded_send(Ok(Bytes::from_static(b"hello ")))
            .unwrap();
        to_desktop
            .unbounded_send(Ok(Bytes::from_static(b"desktop")))
            .unwrap();
        let mut got = [0u8; 13];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello desktop");

        far.write_all(b"frame").await.unwrap();
        assert_eq!(
            from_desktop.next().await.unwrap(),
            Bytes::from_static(b"frame")
        );
        drop(far);
        assert_eq!(task.await.unwrap().unwrap(), SpliceEnd::DesktopClosed);
        assert_eq!(from_desktop.next().await, None, "the socket is closed too");
    }

    #[tokio::test]
    async fn a_closed_socket_ends_it_and_a_broken_one_is_an_error() {
        let (desktop, mut far) = tokio::io::duplex(1024);
        let (to_desktop, incoming) = mpsc::unbounded::<io::Result<Bytes>>();
        let outgoing = futures::sink::drain().sink_map_err(|_| io::Error::other("never"));
        let task = tokio::spawn(splice(desktop, incoming, outgoing));
        drop(to_desktop);
        assert_eq!(task.await.unwrap().unwrap(), SpliceEnd::SocketClosed);
        let mut rest = Vec::new();
        far.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "the desktop's side saw its end");

        let (desktop, _far) = tokio::io::duplex(1024);
        let (to_desktop, incoming) = mpsc::unbounded::<io::Result<Bytes>>();
        let outgoing = futures::sink::drain().sink_map_err(|_| io::Error::other("never"));
        let task = tokio::spawn(splice(desktop, incoming, outgoing));
        to_desktop
            .unbounded_send(Err(io::Error::other("connection reset")))
            .unwrap();
        assert!(task.await.unwrap().is_err());
    }
}
