//! [`PartialMessageBuffer`]: fragmented websocket messages, put back together
//! within a size bound.
//!
//! A websocket message may arrive in fragments: awc's codec yields them as
//! `Frame::Continuation(Item::FirstText | FirstBinary)`, then any number of
//! `Item::Continue`, then `Item::Last`. Its frame-size limit applies to each
//! fragment, not to the message, so without a bound of its own a peer could
//! grow the buffer without end. This one refuses a message that would grow
//! past `max` bytes: it reports [`PartialError::Overflow`] once, frees what
//! it held, and skips the rest of that message, so the next message could
//! be read normally. The worker's connection treats it as a protocol error
//! all the same and renews the connection: the message dropped may have
//! been an assignment, which must not vanish without a word.
//!
//! Control frames (ping, pong, close) may come between fragments (RFC 6455
//! §5.4); they pass through [`feed`](PartialMessageBuffer::feed) untouched
//! and leave the message being assembled as it was. Fragments out of order (a
//! continuation with no first fragment, a new first fragment or a whole data
//! frame inside an open message) are protocol errors: the buffer resets, and
//! the connection should be closed with status 1002 (protocol error).

use actix_http::ws::Item;
use awc::ws::Frame;
use bytes::{Bytes, BytesMut};

use crate::protocol::MAX_FRAME_SIZE;

/// A message reassembled from its fragments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CompleteMessage {
    /// A text message. Its bytes are not checked for UTF-8 here, as awc does
    /// not check a whole `Frame::Text` either: the decoder does.
    Text(Bytes),
    /// A binary message (the LiveKit agent protocol's protobuf frames).
    Binary(Bytes),
}

impl CompleteMessage {
    /// The message as the whole frame it would have been unfragmented, so
    /// that one code path handles both.
    pub fn into_frame(self) -> Frame {
        match self {
            Self::Text(bytes) => Frame::Text(bytes),
            Self::Binary(bytes) => Frame::Binary(bytes),
        }
    }
}

/// Why a fragment was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartialError {
    /// The message would exceed the bound; it is dropped, and its remaining
    /// fragments are skipped. The connection can go on.
    #[error("a fragmented message of at least {size} bytes exceeds the {max}-byte limit")]
    Overflow {
        /// The size the message reached with the refused fragment.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A `Continue` or `Last` fragment with no message open: a protocol
    /// error; close the connection.
    #[error("continuation fragment without a first fragment")]
    NotStarted,
    /// A new first fragment while a message is open: a protocol error; the
    /// open message is dropped, and the connection should be closed.
    #[error("a new fragmented message started before the previous one ended")]
    AlreadyStarted,
    /// A whole text or binary frame inside a fragmented message: a protocol
    /// error; the open message is dropped, and the connection should be
    /// closed.
    #[error("a data frame arrived in the middle of a fragmented message")]
    Interleaved,
}

/// What the buffer is doing.
#[derive(Debug)]
enum State {
    /// No message open.
    Idle,
    /// Assembling a message.
    Open { text: bool, bytes: BytesMut },
    /// Skipping the rest of a message that overflowed.
    Discarding,
}

/// Reassembles fragmented websocket messages, holding at most `max` bytes.
/// One per connection; it holds nothing between messages.
#[derive(Debug)]
pub struct PartialMessageBuffer {
    max: usize,
    state: State,
}

impl Default for PartialMessageBuffer {
    /// Bounded at [`MAX_FRAME_SIZE`]: the server sends no message larger, so
    /// neither may one reassembled from fragments be.
    fn default() -> Self {
        Self::new(MAX_FRAME_SIZE)
    }
}

impl PartialMessageBuffer {
    /// A buffer that refuses messages over `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            state: State::Idle,
        }
    }

    /// The bound.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Bytes held for the message being assembled.
    pub fn buffered(&self) -> usize {
        match &self.state {
            State::Open { bytes, .. } => bytes.len(),
            State::Idle | State::Discarding => 0,
        }
    }

    /// True between a message's first fragment and its last (also while an
    /// overflowed message is being skipped).
    pub fn is_open(&self) -> bool {
        !matches!(self.state, State::Idle)
    }

    /// Drops any message being assembled (after the connection is lost: a
    /// new connection starts with no message open).
    pub fn reset(&mut self) {
        self.state = State::Idle;
    }

    /// Takes one fragment. Returns the whole message once its last fragment
    /// is in, `None` while more are expected.
    pub fn push(&mut self, item: Item) -> Result<Option<CompleteMessage>, PartialError> {
        match (std::mem::replace(&mut self.state, State::Idle), item) {
            (State::Idle, Item::FirstText(first)) => self.start(true, first),
            (State::Idle, Item::FirstBinary(first)) => self.start(false, first),
            (State::Idle, Item::Continue(_) | Item::Last(_)) => Err(PartialError::NotStarted),
            (State::Open { .. } | State::Discarding, Item::FirstText(_) | Item::FirstBinary(_)) => {
                Err(PartialError::AlreadyStarted)
            }
            (State::Open { text, mut bytes }, Item::Continue(more)) => {
                self.append(&mut bytes, &more, false)?;
                self.state = State::Open { text, bytes };
                Ok(None)
            }
            (State::Open { text, mut bytes }, Item::Last(more)) => {
                self.append(&mut bytes, &more, true)?;
                let bytes = bytes.freeze();
                Ok(Some(if text {
                    CompleteMessage::Text(bytes)
                } else {
                    CompleteMessage::Binary(bytes)
                }))
            }
            (State::Discarding, Item::Continue(_)) => {
                self.state = State::Discarding;
                Ok(None)
            }
            (State::Discarding, Item::Last(_)) => Ok(None),
        }
    }

    /// Takes any frame, as the connection reads them: fragments go to
    /// [`push`](Self::push) and come out as one `Frame::Text` or
    /// `Frame::Binary` when complete; every other frame is returned as it
    /// came. Control frames never disturb an open message.
    pub fn feed(&mut self, frame: Frame) -> Result<Option<Frame>, PartialError> {
        match frame {
            Frame::Continuation(item) => Ok(self.push(item)?.map(CompleteMessage::into_frame)),
            Frame::Text(_) | Frame::Binary(_) if self.is_open() => {
                self.reset();
                Err(PartialError::Interleaved)
            }
            other => Ok(Some(other)),
        }
    }

    /// Opens a message with its first fragment (the state is `Idle`).
    fn start(&mut self, text: bool, first: Bytes) -> Result<Option<CompleteMessage>, PartialError> {
        let mut bytes = BytesMut::new();
        self.append(&mut bytes, &first, false)?;
        self.state = State::Open { text, bytes };
        Ok(None)
    }

    /// Appends a fragment within the bound. On overflow the message's bytes
    /// are freed and, unless this was its last fragment, the rest of it is
    /// skipped.
    fn append(
        &mut self,
        bytes: &mut BytesMut,
        more: &[u8],
        last: bool,
    ) -> Result<(), PartialError> {
        let size = bytes.len().saturating_add(more.len());
        if size > self.max {
            *bytes = BytesMut::new();
            self.state = if last { State::Idle } else { State::Discarding };
            return Err(PartialError::Overflow {
                size,
                max: self.max,
            });
        }
        bytes.extend_from_slice(more);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(text: &'static str) -> Bytes {
        Bytes::from_static(text.as_bytes())
    }

    #[test]
    fn fragments_are_joined_in_order() {
        let mut buf = PartialMessageBuffer::default();
        assert_eq!(buf.push(Item::FirstBinary(b("ab"))), Ok(None));
        assert_eq!(buf.push(Item::Continue(b("cd"))), Ok(None));
        assert_eq!(buf.push(Item::Continue(b(""))), Ok(None));
        assert_eq!(buf.buffered(), 4);
        assert_eq!(
            buf.push(Item::Last(b("e"))),
            Ok(Some(CompleteMessage::Binary(b("abcde"))))
        );
        assert!(!buf.is_open());
        assert_eq!(buf.buffered(), 0);
        // A text message, first and last only.
        assert_eq!(buf.push(Item::FirstText(b("{\"a\":"))), Ok(None));
        assert_eq!(
            buf.push(Item::Last(b("1}"))),
            Ok(Some(CompleteMessage::Text(b("{\"a\":1}"))))
        );
    }

    #[test]
    fn control_frames_between_fragments_pass_through_untouched() {
        let mut buf = PartialMessageBuffer::default();
        let sequence = [
            Frame::Continuation(Item::FirstBinary(b("he"))),
            Frame::Ping(b("p1")),
            Frame::Continuation(Item::Continue(b("ll"))),
            Frame::Pong(b("p2")),
            Frame::Ping(b("p3")),
            Frame::Continuation(Item::Last(b("o"))),
            Frame::Binary(b("whole")),
        ];
        let mut out = Vec::new();
        for frame in sequence {
            let held_before = (buf.is_open(), buf.buffered());
            let control = matches!(frame, Frame::Ping(_) | Frame::Pong(_));
            if let Some(frame) = buf.feed(frame).unwrap() {
                out.push(frame);
            }
            if control {
                assert_eq!((buf.is_open(), buf.buffered()), held_before);
            }
        }
        assert_eq!(
            out,
            [
                Frame::Ping(b("p1")),
                Frame::Pong(b("p2")),
                Frame::Ping(b("p3")),
                Frame::Binary(b("hello")),
                Frame::Binary(b("whole")),
            ]
        );
    }

    #[test]
    fn a_close_frame_mid_message_passes_and_reset_drops_the_message() {
        let mut buf = PartialMessageBuffer::default();
        buf.feed(Frame::Continuation(Item::FirstText(b("x"))))
            .unwrap();
        assert_eq!(buf.feed(Frame::Close(None)), Ok(Some(Frame::Close(None))));
        assert_eq!(buf.buffered(), 1);
        buf.reset();
        assert!(!buf.is_open());
        assert_eq!(buf.push(Item::Last(b("y"))), Err(PartialError::NotStarted));
    }

    #[test]
    fn an_overflow_drops_the_message_and_skips_its_remaining_fragments() {
        let mut buf = PartialMessageBuffer::new(5);
        assert_eq!(buf.push(Item::FirstBinary(b("abc"))), Ok(None));
        assert_eq!(
            buf.push(Item::Continue(b("def"))),
            Err(PartialError::Overflow { size: 6, max: 5 })
        );
        assert_eq!(buf.buffered(), 0, "nothing held after an overflow");
        assert_eq!(buf.push(Item::Continue(b("ghi"))), Ok(None));
        assert_eq!(buf.buffered(), 0);
        assert_eq!(buf.push(Item::Last(b("jkl"))), Ok(None));
        assert!(!buf.is_open());
        // The next message is read normally.
        buf.push(Item::FirstText(b("ok"))).unwrap();
        assert_eq!(
            buf.push(Item::Last(b("!"))),
            Ok(Some(CompleteMessage::Text(b("ok!"))))
        );
    }

    #[test]
    fn an_overflow_on_the_first_or_last_fragment_is_caught_too() {
        let mut buf = PartialMessageBuffer::new(4);
        assert_eq!(
            buf.push(Item::FirstBinary(b("12345"))),
            Err(PartialError::Overflow { size: 5, max: 4 })
        );
        assert_eq!(buf.push(Item::Last(b(""))), Ok(None));
        buf.push(Item::FirstBinary(b("12"))).unwrap();
        assert_eq!(
            buf.push(Item::Last(b("345"))),
            Err(PartialError::Overflow { size: 5, max: 4 })
        );
        assert!(
            !buf.is_open(),
            "an overflowing last fragment ends the message"
        );
        // Exactly at the bound is fine.
        buf.push(Item::FirstBinary(b("12"))).unwrap();
        assert_eq!(
            buf.push(Item::Last(b("34"))),
            Ok(Some(CompleteMessage::Binary(b("1234"))))
        );
    }

    #[test]
    fn out_of_order_fragments_are_errors_that_reset() {
        let mut buf = PartialMessageBuffer::default();
        assert_eq!(
            buf.push(Item::Continue(b("a"))),
            Err(PartialError::NotStarted)
        );
        assert_eq!(buf.push(Item::Last(b("a"))), Err(PartialError::NotStarted));
        assert!(!buf.is_open());

        buf.push(Item::FirstText(b("a"))).unwrap();
        assert_eq!(
            buf.push(Item::FirstBinary(b("b"))),
            Err(PartialError::AlreadyStarted)
        );
        assert!(!buf.is_open(), "both messages are dropped");

        buf.push(Item::FirstText(b("a"))).unwrap();
        assert_eq!(
            buf.feed(Frame::Text(b("b"))),
            Err(PartialError::Interleaved)
        );
        assert!(!buf.is_open());
        // Outside a message, whole data frames pass.
        assert_eq!(buf.feed(Frame::Text(b("c"))), Ok(Some(Frame::Text(b("c")))));
    }

    #[test]
    fn a_new_first_fragment_while_skipping_an_overflow_is_an_error() {
        let mut buf = PartialMessageBuffer::new(1);
        assert!(buf.push(Item::FirstBinary(b("too long"))).is_err());
        assert_eq!(
            buf.push(Item::FirstBinary(b("x"))),
            Err(PartialError::AlreadyStarted)
        );
        assert!(!buf.is_open());
    }

    #[test]
    fn the_default_bound_is_the_protocols_frame_limit() {
        let mut buf = PartialMessageBuffer::default();
        assert_eq!(buf.max(), MAX_FRAME_SIZE);
        let half = Bytes::from(vec![0u8; MAX_FRAME_SIZE / 2]);
        buf.push(Item::FirstBinary(half.clone())).unwrap();
        buf.push(Item::Continue(half)).unwrap();
        assert_eq!(
            buf.push(Item::Last(b("!"))),
            Err(PartialError::Overflow {
                size: MAX_FRAME_SIZE + 1,
                max: MAX_FRAME_SIZE
            })
        );
    }
}
