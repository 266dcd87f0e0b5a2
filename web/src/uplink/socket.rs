//! The uplink's WebSocket: hello, frames, acks; reconnect and resend; frames read back from the outbox. Browser
//! only.
//!
//! ```text
//!  frame saved in the outbox ─► Flow: in flight (send if live) or spilled (stays in the outbox)
//!  open ─► hello ─► ready ─► resend every frame in flight, in order, with its original seq ─► live
//!  ack seq ─► drop it from memory, delete it from the outbox ─► read spilled frames back as room allows
//!  close/error ─► backoff with jitter ─► open again          done ─► remove the recording from the outbox
//! ```
//!
//! A recording is done when it stopped and every frame is acked. Errors that are the recorder's fault
//! (`retryable() == false`) stop the uplink and are shown; the others reconnect.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use gloo_timers::callback::Timeout;
use soundline_shared::control::{ClientMessage, Hello, LinkState, Resume, ServerMessage};
use soundline_shared::recording::Recording;
use web_sys::{BinaryType, WebSocket};

use super::{Backoff, Flow, reconnect_backoff};
use crate::i18n::{Key, tf};
use crate::outbox::{self, Outbox};

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
        /// Frames waiting for an ack (in flight or in the outbox).
        pending: u64,
        /// Audio waiting for an ack, ms.
        pending_ms: u64,
    },
    /// Something went wrong on the device (the outbox could not be read or cleaned); nothing is lost by it.
    Problem(String),
    /// The relay refused the recording; the uplink stopped.
    Refused(String),
    /// Stopped, every frame acked, and the recording removed from the outbox.
    Done,
}

/// One recording's connection to the relay.
pub struct Uplink {
    url: String,
    /// The access token, offered as subprotocol `bearer.<token>` (empty: none).
    token: String,
    recording: Recording,
    /// Where the last acked frame landed: a reconnect's hello says so, so that a relay other than the one that
    /// stored them acks the frames whose acks were lost instead of producing them again (in memory: a reloaded
    /// page resumes without it).
    last_ack: Option<Resume>,
    segment_id: String,
    /// Bytes of one full frame (to size reads from the outbox).
    frame_bytes: usize,
    flow: Flow,
    /// Where spilled frames are read back from and acked ones deleted (`None`: this browser has no outbox).
    outbox: Option<Outbox>,
    backoff: Backoff,
    /// The socket and its handlers, dropped together: a socket given up on never reaches this uplink again.
    ws: Option<(WebSocket, crate::SocketHooks)>,
    /// The one timer of the connection: the handshake's deadline while connecting, the next attempt while
    /// waiting for it. Replacing or dropping it cancels it.
    timer: Option<Timeout>,
    /// Deleting acked frames, about a second after the first of them; retrying a failed read-back.
    delete_timer: Option<Timeout>,
    pump_retry: Option<Timeout>,
    live: bool,
    refused: bool,
    /// A read from the outbox is under way.
    loading: bool,
    /// The recording is done and being removed from the outbox.
    closing: bool,
    on_event: Rc<dyn Fn(Event)>,
    me: Weak<RefCell<Uplink>>,
}

/// How long a connection attempt may take to reach `ready`.
const HANDSHAKE_TIMEOUT_MS: u32 = 10_000;

impl Uplink {
    /// Connects to `url` (`ws(s)://host/ws/record`) for `recording`, whose frames (`frame_ms` long) are in `flow`
    /// (a new recording's, or one an earlier page left in `outbox`); `on_event` hears every change.
    pub fn start(
        url: String,
        token: String,
        recording: Recording,
        frame_ms: u32,
        flow: Flow,
        outbox: Option<Outbox>,
        on_event: Rc<dyn Fn(Event)>,
    ) -> Rc<RefCell<Self>> {
        let segment_id = recording.segment_id.clone();
        let uplink = Rc::new_cyclic(|me| {
            RefCell::new(Self {
                url,
                token,
                recording,
                last_ack: None,
                segment_id,
                frame_bytes: outbox::frame_bytes(frame_ms) as usize,
                flow,
                outbox,
                backoff: reconnect_backoff(),
                ws: None,
                timer: None,
                delete_timer: None,
                pump_retry: None,
                live: false,
                refused: false,
                loading: false,
                closing: false,
                on_event,
                me: me.clone(),
            })
        });
        uplink.borrow_mut().connect();
        uplink
    }

    /// A frame is in the outbox: send it now (live and room in flight) or read it back from there later.
    pub fn saved(&mut self, seq: u32, duration_ms: u32, encoded: Vec<u8>) {
        if self.flow.saved(seq, duration_ms, encoded) {
            self.send(seq);
        }
        self.counts();
    }

    /// A frame the outbox could not take: memory is its only copy until the relay acks it.
    pub fn unsaved(&mut self, seq: u32, duration_ms: u32, encoded: Vec<u8>) {
        if self.flow.unsaved(seq, duration_ms, encoded) {
            self.send(seq);
        }
        self.counts();
    }

    /// No more frames: done once every frame is acked.
    pub fn stop(&mut self) {
        self.flow.finish();
        self.finish_if_done();
    }

    /// Frames waiting for an ack.
    pub fn pending(&self) -> u64 {
        self.flow.waiting()
    }

    /// The segment this uplink sends.
    pub fn segment_id(&self) -> &str {
        &self.segment_id
    }

    fn send(&self, seq: u32) {
        if self.live
            && let Some((ws, _)) = &self.ws
            && let Some(encoded) = self.flow.encoded(seq)
        {
            let _ = ws.send_with_u8_array(encoded);
        }
    }

    fn counts(&self) {
        (self.on_event)(Event::Counts {
            acked: self.flow.acked(),
            pending: self.flow.waiting(),
            pending_ms: self.flow.waiting_ms(),
        });
    }

    /// Reads spilled frames back from the outbox while connected and there is room in flight.
    fn pump(&mut self) {
        if !self.live || self.loading || self.closing {
            return;
        }
        let Some((from, max)) = self.flow.to_load(self.frame_bytes) else { return };
        let Some(outbox) = self.outbox.clone() else { return };
        self.loading = true;
        let (me, segment) = (self.me.clone(), self.segment_id.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let read = outbox.load(&segment, from, max).await;
            let Some(u) = me.upgrade() else { return };
            let mut u = u.borrow_mut();
            u.loading = false;
            match read {
                Ok((frames, bad)) => {
                    for problem in bad {
                        (u.on_event)(Event::Problem(problem));
                    }
                    let frames = frames.into_iter().map(|f| (f.seq, f.duration_ms, f.encoded)).collect();
                    for seq in u.flow.loaded(frames, max) {
                        u.send(seq);
                    }
                    u.pump();
                    u.finish_if_done();
                }
                Err(e) => {
                    (u.on_event)(Event::Problem(tf(Key::ReadBack, &[&outbox::describe(&e)])));
                    let me = u.me.clone();
                    u.pump_retry = Some(Timeout::new(2_000, move || {
                        if let Some(u) = me.upgrade() {
                            u.borrow_mut().pump();
                        }
                    }));
                }
            }
        });
    }

    /// Deletes acked frames from the outbox, about once a second.
    fn schedule_deletes(&mut self) {
        if self.delete_timer.is_some() || self.outbox.is_none() {
            return;
        }
        let me = self.me.clone();
        self.delete_timer = Some(Timeout::new(1_000, move || {
            let Some(u) = me.upgrade() else { return };
            let (outbox, segment, seqs) = {
                let mut u = u.borrow_mut();
                u.delete_timer = None;
                (u.outbox.clone(), u.segment_id.clone(), u.flow.take_deletes())
            };
            let Some(outbox) = outbox else { return };
            wasm_bindgen_futures::spawn_local(async move {
                if let Err(e) = outbox.acked(&segment, &seqs).await
                    && let Some(u) = me.upgrade()
                {
                    // Left in the outbox: a later page sends them again and the relay acks them again.
                    (u.borrow().on_event)(Event::Problem(tf(Key::CleanUp, &[&seqs.len(), &outbox::describe(&e)])));
                }
            });
        }));
    }

    fn finish_if_done(&mut self) {
        if !self.flow.done() || self.closing {
            return;
        }
        self.closing = true;
        self.timer = None;
        if let Some((ws, hooks)) = self.ws.take() {
            drop(hooks);
            let _ = ws.close_with_code(1000);
        }
        self.live = false;
        let me = self.me.clone();
        let (outbox, segment) = (self.outbox.clone(), self.segment_id.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let cleaned = match outbox {
                Some(outbox) => outbox.finish(&segment).await.map_err(|e| outbox::describe(&e)),
                None => Ok(()),
            };
            let Some(u) = me.upgrade() else { return };
            let on_event = Rc::clone(&u.borrow().on_event);
            if let Err(e) = cleaned {
                on_event(Event::Problem(tf(Key::NotRemoved, &[&e])));
            }
            on_event(Event::Done);
        });
    }

    fn connect(&mut self) {
        // The previous socket's handlers go with it.
        self.ws = None;
        let ws = match crate::open_socket(&self.url, &self.token) {
            Ok(ws) => ws,
            Err(_) => return self.schedule_reconnect(),
        };
        ws.set_binary_type(BinaryType::Arraybuffer);
        let hello =
            ClientMessage::Hello(Hello { resume: self.last_ack, ..Hello::new(self.recording.clone()) }).to_json();
        let socket = ws.clone();
        let on_open = move || {
            let _ = socket.send_with_str(&hello);
        };
        let me = self.me.clone();
        let on_text = move |text: String| {
            if let Some(u) = me.upgrade() {
                u.borrow_mut().on_text(&text);
            }
        };
        let me = self.me.clone();
        let on_close = move |_code: u16| {
            if let Some(u) = me.upgrade() {
                u.borrow_mut().on_close();
            }
        };
        let hooks = crate::SocketHooks::new(&ws, on_open, on_text, on_close);
        self.ws = Some((ws, hooks));
        // A network that swallows packets leaves a connection attempt hanging for minutes: give up on one that
        // is not ready within the handshake timeout and try again (frames stay in the resend buffer). Reaching
        // `ready` or closing cancels this timer.
        let me = self.me.clone();
        self.timer = Some(Timeout::new(HANDSHAKE_TIMEOUT_MS, move || {
            let Some(u) = me.upgrade() else { return };
            let mut u = u.borrow_mut();
            if u.live || u.refused {
                return;
            }
            if let Some((ws, hooks)) = u.ws.take() {
                drop(hooks);
                let _ = ws.close();
            }
            u.schedule_reconnect();
        }));
    }

    fn on_text(&mut self, text: &str) {
        let Ok(msg) = ServerMessage::parse(text) else { return };
        match msg {
            ServerMessage::Ready { .. } => {
                self.live = true;
                self.timer = None;
                self.backoff.reset();
                if let Some((ws, _)) = &self.ws {
                    for (_, encoded) in self.flow.in_flight() {
                        let _ = ws.send_with_u8_array(encoded);
                    }
                }
                (self.on_event)(Event::Live);
                self.pump();
                self.finish_if_done();
            }
            ServerMessage::Ack { seq, partition, offset } => {
                self.last_ack = Some(Resume { partition, offset });
                if self.flow.ack(seq) {
                    self.schedule_deletes();
                }
                self.counts();
                self.pump();
                self.finish_if_done();
            }
            ServerMessage::Status { state, message, .. } => (self.on_event)(Event::Relay(state, message)),
            ServerMessage::Error { code, message } => {
                if !code.retryable() {
                    self.refused = true;
                    (self.on_event)(Event::Refused(tf(Key::Refused, &[&message, &code])));
                }
            }
        }
    }

    fn on_close(&mut self) {
        self.live = false;
        self.ws = None;
        self.timer = None;
        if self.refused || self.closing {
            return;
        }
        self.schedule_reconnect();
    }

    fn schedule_reconnect(&mut self) {
        let delay = self.backoff.next_delay(js_sys::Math::random()).as_millis() as u32;
        (self.on_event)(Event::Reconnecting { retry_ms: delay });
        let me = self.me.clone();
        self.timer = Some(Timeout::new(delay, move || {
            if let Some(u) = me.upgrade() {
                u.borrow_mut().connect();
            }
        }));
    }
}
