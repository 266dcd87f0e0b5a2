//! The uplink's WebSocket: hello, frames, acks; reconnect and resend. Browser only.
//!
//! ```text
//!  pipeline frame ─► encode ─► ResendBuffer ─► (live?) send
//!  open ─► hello ─► ready ─► resend every unacked frame, in order, with its original seq ─► live
//!  ack seq ─► drop it from the buffer        close/error ─► backoff with jitter ─► open again
//! ```
//!
//! A recording stops when every frame is acked (or the page says what is still pending). Errors that are the
//! recorder's fault (`retryable() == false`) stop the uplink and are shown; the others reconnect.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use soundline_shared::control::{ClientMessage, Hello, LinkState, ServerMessage};
use soundline_shared::frame;
use soundline_shared::recording::Recording;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{BinaryType, CloseEvent, MessageEvent, WebSocket};

use super::{Backoff, DEFAULT_MAX_BYTES, Overflow, ResendBuffer};
use crate::pipeline::Frame;

/// What the page shows about the uplink.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Connected and frames are reaching Kafka.
    Live,
    /// Not connected; trying again in `retry_ms`.
    Reconnecting {
        /// Delay before the next attempt.
        retry_ms: u32,
    },
    /// The relay holds frames because Kafka is slow or away.
    Relay(LinkState, String),
    /// Counters changed.
    Counts {
        /// Frames acked so far.
        acked: u64,
        /// Frames waiting for an ack.
        pending: usize,
        /// Audio waiting for an ack, ms.
        pending_ms: u64,
    },
    /// The resend buffer was full: these frames are lost.
    Dropped(Vec<Overflow>),
    /// The relay refused the recording; the uplink stopped.
    Refused(String),
    /// Stopped and every frame acked.
    Done,
}

/// One recording's connection to the relay.
pub struct Uplink {
    url: String,
    /// The access token, offered as subprotocol `bearer.<token>` (empty: none).
    token: String,
    hello: String,
    buffer: ResendBuffer,
    backoff: Backoff,
    ws: Option<WebSocket>,
    /// Counts connection attempts, so a late timer knows whether its attempt is still the current one.
    attempt: u32,
    live: bool,
    stopping: bool,
    refused: bool,
    acked: u64,
    on_event: Rc<dyn Fn(Event)>,
    handlers: Vec<Box<dyn std::any::Any>>,
    me: Weak<RefCell<Uplink>>,
}

/// How long a connection attempt may take to reach `ready`.
const HANDSHAKE_TIMEOUT_MS: u32 = 10_000;

/// Unhooks a socket's handlers, so that its late events never reach closures this uplink has dropped.
fn detach(ws: &WebSocket) {
    ws.set_onopen(None);
    ws.set_onmessage(None);
    ws.set_onclose(None);
}

impl Uplink {
    /// Connects to `url` (`ws(s)://host/ws/record`) for `recording`; `on_event` hears every change.
    pub fn start(url: String, token: String, recording: Recording, on_event: Rc<dyn Fn(Event)>) -> Rc<RefCell<Self>> {
        let hello = ClientMessage::Hello(Hello::new(recording)).to_json();
        let uplink = Rc::new_cyclic(|me| {
            RefCell::new(Self {
                url,
                token,
                hello,
                buffer: ResendBuffer::new(DEFAULT_MAX_BYTES),
                backoff: Backoff::default(),
                ws: None,
                attempt: 0,
                live: false,
                stopping: false,
                refused: false,
                acked: 0,
                on_event,
                handlers: Vec::new(),
                me: me.clone(),
            })
        });
        uplink.borrow_mut().connect();
        uplink
    }

    /// Queues a frame: kept until acked, sent now if the connection is live.
    pub fn push(&mut self, frame: &Frame) {
        let encoded = frame::encode_to_vec(frame.seq, frame.capture_ts_ms, &frame.samples);
        if self.live
            && let Some(ws) = &self.ws
        {
            let _ = ws.send_with_u8_array(&encoded);
        }
        let duration_ms = (frame.samples.len() / 16) as u32;
        let dropped = self.buffer.push(frame.seq, duration_ms, encoded);
        if !dropped.is_empty() {
            (self.on_event)(Event::Dropped(dropped));
        }
        self.counts();
    }

    /// No more frames: close once every frame is acked.
    pub fn stop(&mut self) {
        self.stopping = true;
        self.finish_if_done();
    }

    /// Frames waiting for an ack.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    fn counts(&self) {
        (self.on_event)(Event::Counts {
            acked: self.acked,
            pending: self.buffer.len(),
            pending_ms: self.buffer.pending_ms(),
        });
    }

    fn finish_if_done(&mut self) {
        if self.stopping && self.buffer.is_empty() {
            if let Some(ws) = self.ws.take() {
                detach(&ws);
                let _ = ws.close_with_code(1000);
            }
            (self.on_event)(Event::Done);
        }
    }

    fn connect(&mut self) {
        if let Some(old) = self.ws.take() {
            detach(&old);
        }
        let ws = match crate::open_socket(&self.url, &self.token) {
            Ok(ws) => ws,
            Err(_) => return self.schedule_reconnect(),
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        let hello = self.hello.clone();
        let socket = ws.clone();
        let on_open = Closure::<dyn FnMut()>::new(move || {
            let _ = socket.send_with_str(&hello);
        });
        let me = self.me.clone();
        let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
            let Some(text) = e.data().as_string() else { return };
            if let Some(u) = me.upgrade() {
                u.borrow_mut().on_text(&text);
            }
        });
        let me = self.me.clone();
        let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |_: CloseEvent| {
            if let Some(u) = me.upgrade() {
                u.borrow_mut().on_close();
            }
        });
        ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
        self.handlers = vec![Box::new(on_open), Box::new(on_message), Box::new(on_close)];
        self.ws = Some(ws);
        // A network that swallows packets leaves a connection attempt hanging for minutes: give up on one that
        // is not ready within the handshake timeout and try again (frames stay in the resend buffer).
        self.attempt = self.attempt.wrapping_add(1);
        let (me, attempt) = (self.me.clone(), self.attempt);
        crate::later(HANDSHAKE_TIMEOUT_MS, move || {
            let Some(u) = me.upgrade() else { return };
            let mut u = u.borrow_mut();
            if u.attempt == attempt && !u.live && !u.refused && u.ws.is_some() {
                if let Some(ws) = u.ws.take() {
                    detach(&ws);
                    let _ = ws.close();
                }
                u.schedule_reconnect();
            }
        });
    }

    fn on_text(&mut self, text: &str) {
        let Ok(msg) = ServerMessage::parse(text) else { return };
        match msg {
            ServerMessage::Ready { .. } => {
                self.live = true;
                self.backoff.reset();
                if let Some(ws) = &self.ws {
                    for (_, encoded) in self.buffer.unacked() {
                        let _ = ws.send_with_u8_array(encoded);
                    }
                }
                (self.on_event)(Event::Live);
            }
            ServerMessage::Ack { seq, .. } => {
                if self.buffer.ack(seq) {
                    self.acked += 1;
                }
                self.counts();
                self.finish_if_done();
            }
            ServerMessage::Status { state, message, .. } => (self.on_event)(Event::Relay(state, message)),
            ServerMessage::Error { code, message } => {
                if !code.retryable() {
                    self.refused = true;
                    (self.on_event)(Event::Refused(format!("The relay refused the recording: {message} ({code})")));
                }
            }
        }
    }

    fn on_close(&mut self) {
        self.live = false;
        self.ws = None;
        if self.refused || (self.stopping && self.buffer.is_empty()) {
            return;
        }
        self.schedule_reconnect();
    }

    fn schedule_reconnect(&mut self) {
        let delay = self.backoff.next_delay_ms(js_sys::Math::random());
        (self.on_event)(Event::Reconnecting { retry_ms: delay });
        let me = self.me.clone();
        crate::later(delay, move || {
            if let Some(u) = me.upgrade() {
                u.borrow_mut().connect();
            }
        });
    }
}
