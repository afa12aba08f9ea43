//! [`ByteStream`]: a WebSocket as a byte stream (`ws`'s `createWebSocketStream`), for code
//! that speaks `AsyncRead + AsyncWrite` (tokio::io::copy, codecs, TLS over WebSocket...).

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use sockeye_proto::{DataKind, Message};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::websocket::WebSocket;

/// A WebSocket as a byte stream.
///
/// Reading yields the payloads of text and binary messages one after another (message
/// boundaries are not kept); pings and pongs are skipped; a close frame or the end of the
/// connection reads as end of stream. Each write sends one binary message; `shutdown`
/// starts the close handshake. Errors become `io::Error`s whose source is the
/// [`crate::Error`].
pub struct ByteStream<S> {
    ws: WebSocket<S>,
    chunk: Bytes,
    eof: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> ByteStream<S> {
    /// Wraps an open WebSocket.
    pub fn new(ws: WebSocket<S>) -> Self {
        ByteStream {
            ws,
            chunk: Bytes::new(),
            eof: false,
        }
    }

    /// The WebSocket underneath.
    pub fn get_ref(&self) -> &WebSocket<S> {
        &self.ws
    }

    /// Unwraps the WebSocket; bytes of a message read only in part are dropped.
    pub fn into_inner(self) -> WebSocket<S> {
        self.ws
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for ByteStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.chunk.is_empty() {
                let n = self.chunk.len().min(buf.remaining());
                buf.put_slice(&self.chunk[..n]);
                self.chunk.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.ws.poll_recv_message(cx)) {
                Some(Ok(Message::Binary(data) | Message::UncheckedText(data))) => self.chunk = data,
                Some(Ok(Message::Text(text))) => self.chunk = text.into_bytes(),
                Some(Ok(Message::Fragment(fragment))) => self.chunk = fragment.data,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => self.eof = true,
                Some(Err(e)) => {
                    self.eof = true;
                    return Poll::Ready(Err(e.into()));
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for ByteStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.ws.poll_send_ready(cx))?;
        self.ws.queue_frame(DataKind::Binary, buf)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.poll_send_flush(cx).map_err(Into::into)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.ws.queue_close();
        self.ws.poll_send_flush(cx).map_err(Into::into)
    }
}
