//! The outbox: every recorded frame, on the device (IndexedDB), until the relay acks it with its Kafka offset.
//!
//! Where it sits: between the pipeline and the uplink. The page writes each second of frames here (one
//! transaction with durability `"strict"`, so a crash or a power cut after the commit keeps them) before it counts
//! them as recorded and hands them to the uplink; the uplink deletes a frame when its ack arrives, and a recording
//! when its last frame is acked. A page that loads finds the recordings an earlier page left (reloaded, closed,
//! crashed) and uploads them ([`crate::uplink::recover`]).
//!
//! ```text
//!  database "soundline-outbox" (version 1)
//!    recordings   key: segmentId         value: JSON of Stored (the hello's recording, frame length, start time)
//!    frames       key: [segmentId, seq]  value: the encoded frame (Uint8Array), exactly as sent on the wire
//! ```
//!
//! Everything read back is untrusted (another build of the page, a browser bug, a hand-edited database): a row that
//! does not parse is reported with its key and left alone, never a panic.

pub mod lock;
pub mod quota;
pub mod writer;

use std::rc::Rc;

use js_sys::{Array, Uint8Array};
use serde::{Deserialize, Serialize};
use soundline_shared::frame::{self, AudioFrame};
use soundline_shared::recording::Recording;
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use web_sys::{IdbDatabase, IdbKeyRange, IdbOpenDbRequest, IdbRequest, IdbTransaction};

/// The database the page uses.
pub const DB_NAME: &str = "soundline-outbox";
const VERSION: u32 = 1;
const RECORDINGS: &str = "recordings";
const FRAMES: &str = "frames";

#[wasm_bindgen]
extern "C" {
    /// An `IDBDatabase`, for the one call web-sys has only behind its unstable APIs.
    type Database;
    /// `IDBDatabase.transaction(stores, mode, {durability})`.
    #[wasm_bindgen(method, catch, js_name = transaction)]
    fn transaction_with_durability(
        this: &Database,
        stores: &JsValue,
        mode: &str,
        options: &JsValue,
    ) -> Result<IdbTransaction, JsValue>;
}

/// What the outbox keeps about a recording: everything its hello carries, and when and how it was framed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stored {
    /// Car, location, segment and notes, as in the hello.
    pub recording: Recording,
    /// The frame length the page recorded with.
    pub frame_ms: u32,
    /// When recording started (ms since the epoch, the device's clock).
    pub started_ms: f64,
}

/// A recording found in the outbox, with what of it is still there.
#[derive(Debug, Clone, PartialEq)]
pub struct Waiting {
    /// Its metadata.
    pub stored: Stored,
    /// Frames not yet acked.
    pub frames: u32,
    /// The lowest and highest of their sequence numbers (`None`: no frame left).
    pub seqs: Option<(u32, u32)>,
}

/// A frame read back from the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Saved {
    /// Its sequence number.
    pub seq: u32,
    /// Its length in ms.
    pub duration_ms: u32,
    /// The encoded frame, as sent on the wire.
    pub encoded: Vec<u8>,
}

impl Saved {
    /// Reads back what [`Outbox::save`] wrote; `None` if it is not a Soundline frame.
    pub fn parse(encoded: Vec<u8>) -> Option<Self> {
        let f = AudioFrame::decode(&encoded, u32::MAX).ok()?;
        let (seq, duration_ms) = (f.seq, (f.sample_count() / 16) as u32);
        Some(Self { seq, duration_ms, encoded })
    }
}

/// The open database; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    db: IdbDatabase,
}

/// Waits until `target` fires `ok` (true) or one of `failures` (false); the listeners go when it returns.
async fn either(target: &web_sys::EventTarget, ok: &'static str, failures: &[&'static str]) -> bool {
    let (done, outcome) = futures_channel::oneshot::channel();
    let done = Rc::new(std::cell::Cell::new(Some(done)));
    let listen = |event: &'static str, success: bool| {
        let done = Rc::clone(&done);
        gloo_events::EventListener::new(target, event, move |_| {
            if let Some(d) = done.take() {
                let _ = d.send(success);
            }
        })
    };
    let _listeners: Vec<gloo_events::EventListener> =
        std::iter::once(listen(ok, true)).chain(failures.iter().map(|f| listen(f, false))).collect();
    outcome.await.unwrap_or(false)
}

/// Waits for a request's `success` (its result) or `error` (its error).
async fn request(req: &IdbRequest) -> Result<JsValue, JsValue> {
    if either(req, "success", &["error"]).await {
        req.result()
    } else {
        Err(req.error().ok().flatten().map(JsValue::from).unwrap_or_else(|| "request failed".into()))
    }
}

/// Waits until a transaction commits (`complete`), or fails with why it aborted.
async fn committed(tx: &IdbTransaction) -> Result<(), JsValue> {
    if either(tx, "complete", &["error", "abort"]).await {
        Ok(())
    } else {
        Err(tx.error().map(JsValue::from).unwrap_or_else(|| "transaction aborted".into()))
    }
}

fn frame_key(segment_id: &str, seq: u32) -> JsValue {
    Array::of2(&segment_id.into(), &seq.into()).into()
}

/// Every frame key of one segment from `from_seq` on.
fn frames_of(segment_id: &str, from_seq: u32) -> Result<IdbKeyRange, JsValue> {
    IdbKeyRange::bound(&frame_key(segment_id, from_seq), &frame_key(segment_id, u32::MAX))
}

/// Why a stored value could not be used, in one line.
pub fn describe(e: &JsValue) -> String {
    if let Some(ex) = e.dyn_ref::<web_sys::DomException>() {
        return format!("{}: {}", ex.name(), ex.message());
    }
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

/// Whether an error is the browser's storage being full.
pub fn is_quota(e: &JsValue) -> bool {
    e.dyn_ref::<web_sys::DomException>().is_some_and(|ex| ex.name() == "QuotaExceededError")
}

impl Outbox {
    /// Opens (creating on first use) the page's outbox.
    ///
    /// # Errors
    ///
    /// No IndexedDB (a private window of some browsers), or the browser refused it.
    pub async fn open() -> Result<Self, JsValue> {
        Self::open_named(DB_NAME).await
    }

    /// Opens the outbox database `name` (tests use their own).
    ///
    /// # Errors
    ///
    /// As [`Outbox::open`].
    pub async fn open_named(name: &str) -> Result<Self, JsValue> {
        let factory = web_sys::window().ok_or("no window")?.indexed_db()?.ok_or("this browser has no IndexedDB")?;
        let open: IdbOpenDbRequest = factory.open_with_u32(name, VERSION)?;
        let _upgrade = gloo_events::EventListener::new(&open, "upgradeneeded", move |e| {
            let Some(db) = e
                .target()
                .and_then(|t| t.dyn_into::<IdbOpenDbRequest>().ok())
                .and_then(|r| r.result().ok())
                .and_then(|r| r.dyn_into::<IdbDatabase>().ok())
            else {
                return;
            };
            let names = db.object_store_names();
            for store in [RECORDINGS, FRAMES] {
                if !names.contains(store) {
                    let _ = db.create_object_store(store);
                }
            }
        });
        let db = request(&open).await;
        Ok(Self { db: db?.dyn_into()? })
    }

    /// Closes the connection (what a page that goes away does).
    pub fn close(&self) {
        self.db.close();
    }

    fn transaction(&self, stores: &[&str], durability: &str) -> Result<IdbTransaction, JsValue> {
        let names = Array::new();
        for s in stores {
            names.push(&JsValue::from_str(s));
        }
        let options = js_sys::Object::new();
        js_sys::Reflect::set(&options, &"durability".into(), &durability.into())?;
        self.db.unchecked_ref::<Database>().transaction_with_durability(&names, "readwrite", &options)
    }

    /// Writes a new recording's metadata (before its first frame). Durable.
    ///
    /// # Errors
    ///
    /// The browser's (a full disk: `QuotaExceededError`).
    pub async fn begin(&self, stored: &Stored) -> Result<(), JsValue> {
        let json = serde_json::to_string(stored).map_err(|e| JsValue::from_str(&e.to_string()))?;
        let tx = self.transaction(&[RECORDINGS], "strict")?;
        tx.object_store(RECORDINGS)?.put_with_key(&json.into(), &stored.recording.segment_id.as_str().into())?;
        committed(&tx).await
    }

    /// Writes frames of `segment_id` in one durable transaction: when this returns `Ok`, they survive a crash.
    ///
    /// # Errors
    ///
    /// The browser's; then none of them was written.
    pub async fn save<'a>(&self, segment_id: &str, frames: impl IntoIterator<Item = &'a [u8]>) -> Result<(), JsValue> {
        let tx = self.transaction(&[FRAMES], "strict")?;
        let store = tx.object_store(FRAMES)?;
        for encoded in frames {
            let f = AudioFrame::decode(encoded, u32::MAX).map_err(|e| JsValue::from_str(&e.to_string()))?;
            store.put_with_key(&Uint8Array::from(encoded).into(), &frame_key(segment_id, f.seq))?;
        }
        committed(&tx).await
    }

    /// Up to `max` frames of `segment_id` from `from_seq` on, in sequence order. A value that is not a frame is
    /// skipped (and reported in the error list).
    ///
    /// # Errors
    ///
    /// The browser's.
    pub async fn load(&self, segment_id: &str, from_seq: u32, max: u32) -> Result<(Vec<Saved>, Vec<String>), JsValue> {
        let tx = self.db.transaction_with_str(FRAMES)?;
        let values = request(
            &tx.object_store(FRAMES)?.get_all_with_key_and_limit(&frames_of(segment_id, from_seq)?.into(), max)?,
        )
        .await?;
        let mut frames = Vec::new();
        let mut bad = Vec::new();
        for v in Array::from(&values).iter() {
            match v.dyn_into::<Uint8Array>().ok().map(|a| a.to_vec()).and_then(Saved::parse) {
                Some(f) => frames.push(f),
                None => bad.push(format!("a stored frame of {segment_id} is not a Soundline frame")),
            }
        }
        Ok((frames, bad))
    }

    /// Forgets acked frames (their acks name Kafka offsets: Kafka has them). Not forced to disk: a frame whose
    /// deletion a crash undoes is sent again, and the relay acks a resend without producing it twice.
    ///
    /// # Errors
    ///
    /// The browser's.
    pub async fn acked(&self, segment_id: &str, seqs: &[u32]) -> Result<(), JsValue> {
        if seqs.is_empty() {
            return Ok(());
        }
        let tx = self.transaction(&[FRAMES], "relaxed")?;
        let store = tx.object_store(FRAMES)?;
        for &seq in seqs {
            store.delete(&frame_key(segment_id, seq))?;
        }
        committed(&tx).await
    }

    /// The recording is completely in Kafka: removes it, and any frame of it still here. Durable.
    ///
    /// # Errors
    ///
    /// The browser's.
    pub async fn finish(&self, segment_id: &str) -> Result<(), JsValue> {
        let tx = self.transaction(&[RECORDINGS, FRAMES], "strict")?;
        tx.object_store(FRAMES)?.delete(&frames_of(segment_id, 0)?.into())?;
        tx.object_store(RECORDINGS)?.delete(&segment_id.into())?;
        committed(&tx).await
    }

    /// Every recording in the outbox, oldest first, with what of it is left; and a line for each row that could
    /// not be read.
    ///
    /// # Errors
    ///
    /// The browser's.
    pub async fn recordings(&self) -> Result<(Vec<Waiting>, Vec<String>), JsValue> {
        let tx = self.db.transaction_with_str_sequence(&Array::of2(&RECORDINGS.into(), &FRAMES.into()))?;
        let rows = tx.object_store(RECORDINGS)?;
        let keys = request(&rows.get_all_keys()?).await?;
        let values = request(&rows.get_all()?).await?;
        let frames = tx.object_store(FRAMES)?;
        let mut found = Vec::new();
        let mut bad = Vec::new();
        for (key, value) in Array::from(&keys).iter().zip(Array::from(&values).iter()) {
            let key = key.as_string().unwrap_or_default();
            let stored = value
                .as_string()
                .ok_or("not text".to_owned())
                .and_then(|json| serde_json::from_str::<Stored>(&json).map_err(|e| e.to_string()));
            let stored = match stored {
                Ok(s) if s.recording.segment_id == key => s,
                Ok(_) => {
                    bad.push(format!("outbox recording {key:?}: its segmentId differs from its key"));
                    continue;
                }
                Err(e) => {
                    bad.push(format!("outbox recording {key:?} is unreadable: {e}"));
                    continue;
                }
            };
            let range = frames_of(&key, 0)?;
            let count = request(&frames.count_with_key(&range)?).await?.as_f64().unwrap_or(0.0) as u32;
            let seqs = if count == 0 {
                None
            } else {
                let first = request(&frames.get_all_keys_with_key_and_limit(&range, 1)?).await?;
                let last = request(
                    &frames.open_key_cursor_with_range_and_direction(&range, web_sys::IdbCursorDirection::Prev)?,
                )
                .await?;
                let seq_of = |k: JsValue| Array::from(&k).get(1).as_f64().map(|s| s as u32);
                let first = seq_of(Array::from(&first).get(0));
                let last = last.dyn_into::<web_sys::IdbCursor>().ok().and_then(|c| c.key().ok()).and_then(seq_of);
                first.zip(last)
            };
            found.push(Waiting { stored, frames: count, seqs });
        }
        found.sort_by(|a, b| a.stored.started_ms.total_cmp(&b.stored.started_ms));
        Ok((found, bad))
    }
}

/// Bytes an encoded frame of `frame_ms` takes (what the outbox and the wire hold per frame).
pub fn frame_bytes(frame_ms: u32) -> u64 {
    frame::HEADER_LEN as u64 + u64::from(frame_ms) * 32
}
