//! Fetching one recording's audio from Kafka, only when it is played or downloaded: a bounded read on its own
//! `/ws/feed` connection (its partition, from its first offset to its last, its segment only, with PCM), which
//! the relay ends with `end`. Browser only.
//!
//! Where it sits: between the recordings list (which knows each frame's partition and offset, without audio)
//! and the player and the WAV download. The cost is bounded: the relay reads `last - first + 1` records of one
//! partition (other cars' records among them), and sends this recording's frames only.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use soundline_shared::feed::{FeedClientMessage, FeedServerMessage, From, Subscribe};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{CloseEvent, MessageEvent, WebSocket};

/// What a fetch brought back.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Samples by sequence number.
    pub frames: BTreeMap<u32, Vec<i16>>,
    /// Bytes received (the messages' text).
    pub bytes: usize,
}

type Done = Box<dyn FnOnce(Result<Fetched, String>)>;

struct Pending {
    got: Fetched,
    done: Option<Done>,
    _handlers: Vec<Box<dyn std::any::Any>>,
    ws: Option<WebSocket>,
}

/// Fetches frames of `segment_id` at `partition`, offsets `first..=last`, from the feed at `url`; calls `done`
/// once, with the frames or why not.
pub fn recording(url: &str, token: &str, segment_id: &str, partition: i32, first: i64, last: i64, done: Done) {
    let ws = match crate::open_socket(url, token) {
        Ok(ws) => ws,
        Err(e) => return done(Err(format!("{e:?}"))),
    };
    let subscribe = FeedClientMessage::Subscribe(Subscribe {
        from: From::Offsets(BTreeMap::from([(partition, first)])),
        until: Some(BTreeMap::from([(partition, last + 1)])),
        ..Subscribe::live(None, Some(segment_id.to_owned()))
    })
    .to_json();
    let pending =
        Rc::new(RefCell::new(Pending { got: Fetched::default(), done: Some(done), _handlers: Vec::new(), ws: None }));
    let socket = ws.clone();
    let on_open = Closure::<dyn FnMut()>::new(move || {
        let _ = socket.send_with_str(&subscribe);
    });
    let weak = Rc::downgrade(&pending);
    let on_message = Closure::<dyn FnMut(MessageEvent)>::new(move |e: MessageEvent| {
        let (Some(text), Some(p)) = (e.data().as_string(), weak.upgrade()) else { return };
        let mut p = p.borrow_mut();
        p.got.bytes += text.len();
        match FeedServerMessage::parse(&text) {
            Ok(FeedServerMessage::Record(r)) if r.kind == "envelope" => {
                let Some(seq) = r.seq else { return };
                let pcm =
                    r.value["originData"]["base64"].as_str().and_then(|b| BASE64.decode(b).ok()).unwrap_or_default();
                let samples = pcm.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
                p.got.frames.entry(seq).or_insert(samples);
            }
            Ok(FeedServerMessage::End) => {
                let got = std::mem::take(&mut p.got);
                finish(&mut p, Ok(got));
            }
            _ => {}
        }
    });
    let weak = Rc::downgrade(&pending);
    let on_close = Closure::<dyn FnMut(CloseEvent)>::new(move |e: CloseEvent| {
        if let Some(p) = weak.upgrade() {
            let reason = if e.reason().is_empty() { format!("closed ({})", e.code()) } else { e.reason() };
            finish(&mut p.borrow_mut(), Err(reason));
        }
    });
    ws.set_onopen(Some(on_open.as_ref().unchecked_ref()));
    ws.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
    ws.set_onclose(Some(on_close.as_ref().unchecked_ref()));
    let mut p = pending.borrow_mut();
    p._handlers = vec![Box::new(on_open), Box::new(on_message), Box::new(on_close)];
    p.ws = Some(ws);
    drop(p);
    // The socket's handlers hold only weak references: the pending fetch lives until it finishes.
    let keep = Rc::clone(&pending);
    pending.borrow_mut()._handlers.push(Box::new(keep));
}

/// Calls `done` (once) and lets go of the socket and of the fetch itself.
fn finish(p: &mut Pending, result: Result<Fetched, String>) {
    if let Some(done) = p.done.take() {
        if let Some(ws) = p.ws.take() {
            ws.set_onmessage(None);
            ws.set_onclose(None);
            ws.set_onopen(None);
        }
        // Dropping the handlers (and the fetch's own Rc) after this call returns.
        let handlers = std::mem::take(&mut p._handlers);
        crate::later(0, move || drop(handlers));
        done(result);
    }
}
