//! Writes of one connection, held so that what HTTP/2 writes in one turn
//! of its task leaves in one write.
//!
//! h2 writes a data frame's payload straight from its buffer, and flushes
//! before it queues the next frame: a reply's headers and message go in
//! one write and its trailers in another, so the caller reads the reply in
//! two parts. When it has read only the first, its call already has the
//! message and drops the rest, which sends a reset back. [`TurnWriter`]
//! copies every write into a buffer and puts the first flush of a turn
//! off (waking the task so that it comes back at once): the turn's last
//! flush, or the next turn's first, writes everything in one go.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write goes to the socket without waiting for a
/// flush: a few replies' worth, so a large batch streams on.
const MOST_HELD: usize = 256 * 1024;

/// An I/O object whose writes wait for a flush, as the module says.
#[derive(Debug)]
pub struct TurnWriter<Io> {
    io: Io,
    held: BytesMut,
    /// A flush was put off once since the last write to the socket.
    put_off: bool,
}

impl<Io> TurnWriter<Io> {
    /// Wraps `io`.
    pub fn new(io: Io) -> Self {
        Self {
            io,
            held: BytesMut::new(),
            put_off: false,
        }
    }
}

impl<Io: AsyncWrite + Unpin> TurnWriter<Io> {
    /// Writes everything held to the socket.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.held.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.held.advance(written);
        }
        self.put_off = false;
        Poll::Ready(Ok(()))
    }

    /// Makes room for `more` bytes, writing what is held if it would grow
    /// past [`MOST_HELD`].
    fn poll_room(&mut self, cx: &mut Context<'_>, more: usize) -> Poll<io::Result<()>> {
        if !self.held.is_empty() && self.held.len() + more > MOST_HELD {
            ready!(self.poll_write_held(cx))?;
        }
        Poll::Ready(Ok(()))
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for TurnWriter<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for TurnWriter<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_room(cx, buf.len()))?;
        self.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total = bufs.iter().map(|buf| buf.len()).sum();
        ready!(self.poll_room(cx, total))?;
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.held.is_empty() {
            return Pin::new(&mut self.io).poll_flush(cx);
        }
        if !self.put_off {
            // More of this turn may follow; the task comes back at once
            // and its next flush writes all of it.
            self.put_off = true;
            cx.waker().wake_by_ref();
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use futures::task::{waker, ArcWake};

    /// Stands in for a socket: records each write the kernel would get,
    /// which a real socket cannot show a test.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Recorder {
        fn writes(&self) -> Vec<String> {
            let writes = self.0.lock().unwrap();
            writes
                .iter()
                .map(|write| String::from_utf8(write.clone()).unwrap())
                .collect()
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.0.lock().unwrap().push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Turns {
        writer: TurnWriter<Recorder>,
        socket: Recorder,
        wakes: Arc<Wakes>,
    }

    impl Turns {
        fn new() -> Self {
            let socket = Recorder::default();
            Self {
                writer: TurnWriter::new(socket.clone()),
                socket,
                wakes: Arc::default(),
            }
        }

        fn with_cx<T>(
            &mut self,
            step: impl FnOnce(Pin<&mut TurnWriter<Recorder>>, &mut Context<'_>) -> Poll<T>,
        ) -> T {
            let waker = waker(Arc::clone(&self.wakes));
            let mut cx = Context::from_waker(&waker);
            match step(Pin::new(&mut self.writer), &mut cx) {
                Poll::Ready(value) => value,
                Poll::Pending => panic!("the recorder never makes a write wait"),
            }
        }

        fn write(&mut self, bytes: &str) {
            let written = self.with_cx(|writer, cx| writer.poll_write(cx, bytes.as_bytes()));
            assert_eq!(written.unwrap(), bytes.len());
        }

        fn flush(&mut self) {
            self.with_cx(|writer, cx| writer.poll_flush(cx)).unwrap();
        }

        fn wakes(&self) -> usize {
            self.wakes.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn what_one_turn_writes_between_flushes_reaches_the_socket_in_one_write() {
        let mut turns = Turns::new();
        // h2's pattern for a reply: headers and a chained message, a
        // flush, then the trailers and the turn's last flush.
        turns.write("headers");
        let slices = [io::IoSlice::new(b"+msg"), io::IoSlice::new(b"+payload")];
        let written = turns.with_cx(|writer, cx| writer.poll_write_vectored(cx, &slices));
        assert_eq!(written.unwrap(), 12);
        turns.flush();
        assert!(
            turns.socket.writes().is_empty(),
            "the first flush of a turn is put off"
        );
        assert_eq!(
            turns.wakes(),
            1,
            "putting a flush off wakes the task to come back"
        );
        turns.write("+trailers");
        turns.flush();
        assert_eq!(turns.socket.writes(), ["headers+msg+payload+trailers"]);
    }

    #[test]
    fn a_flush_put_off_is_done_at_the_next_flush() {
        let mut turns = Turns::new();
        turns.write("ping");
        turns.flush();
        assert!(turns.socket.writes().is_empty());
        // The task came back (it was woken) and flushed again.
        turns.flush();
        assert_eq!(turns.socket.writes(), ["ping"]);
        // Nothing held: a flush with nothing to write puts nothing off.
        turns.flush();
        assert_eq!(turns.wakes(), 1);
        turns.write("pong");
        turns.flush();
        turns.flush();
        assert_eq!(turns.socket.writes(), ["ping", "pong"]);
    }

    #[test]
    fn more_than_the_most_held_goes_to_the_socket_without_a_flush() {
        let mut turns = Turns::new();
        let big = "x".repeat(MOST_HELD);
        turns.write(&big);
        assert!(turns.socket.writes().is_empty());
        turns.write("y");
        assert_eq!(turns.socket.writes(), [big]);
        let shut = turns.with_cx(|writer, cx| writer.poll_shutdown(cx));
        shut.unwrap();
        assert_eq!(
            turns.socket.writes().last().unwrap(),
            "y",
            "a shutdown writes what is held"
        );
    }
}
