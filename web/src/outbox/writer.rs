//! Saving a recording's frames: about a second at a time, one durable transaction each, and only then counted as
//! recorded and handed to the uplink.
//!
//! Where it sits: the page pushes each frame the pipeline makes; the writer batches them, saves the batch in the
//! outbox and passes each saved frame to [`Uplink::saved`]. A batch the outbox refuses (storage full, or a
//! broken database) goes to [`Uplink::unsaved`]: memory is then its only copy and the page says so. One batch is
//! written at a time, so frames reach the outbox and the uplink in sequence order.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use super::Outbox;
use crate::uplink::socket::Uplink;

/// Frames per transaction: about this much audio.
pub const BATCH_MS: u32 = 1_000;

/// What the page hears from the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    /// Frames saved on the device so far, and their bytes.
    Saved {
        /// Frames.
        frames: u64,
        /// Their encoded bytes.
        bytes: u64,
    },
    /// A batch could not be saved: it is in memory only. `quota`: because storage is full.
    Failed {
        /// The browser's reason, in one line.
        message: String,
        /// Whether the storage is full.
        quota: bool,
        /// Audio only in memory now, ms.
        ms: u32,
    },
}

struct Frame {
    seq: u32,
    duration_ms: u32,
    encoded: Vec<u8>,
}

/// One recording's writer.
pub struct Writer {
    outbox: Option<Outbox>,
    segment_id: String,
    uplink: Rc<RefCell<Uplink>>,
    batch: Vec<Frame>,
    batch_ms: u32,
    saving: bool,
    stopping: bool,
    frames: u64,
    bytes: u64,
    on_saved: Rc<dyn Fn(Saved)>,
    me: Weak<RefCell<Writer>>,
}

impl Writer {
    /// A writer for the recording `segment_id` into `outbox` (`None`: this browser has none; every frame is then
    /// memory-only), handing frames to `uplink`.
    pub fn new(
        outbox: Option<Outbox>,
        segment_id: String,
        uplink: Rc<RefCell<Uplink>>,
        on_saved: Rc<dyn Fn(Saved)>,
    ) -> Rc<RefCell<Self>> {
        Rc::new_cyclic(|me| {
            RefCell::new(Self {
                outbox,
                segment_id,
                uplink,
                batch: Vec::new(),
                batch_ms: 0,
                saving: false,
                stopping: false,
                frames: 0,
                bytes: 0,
                on_saved,
                me: me.clone(),
            })
        })
    }

    /// A frame from the pipeline.
    pub fn push(&mut self, seq: u32, duration_ms: u32, encoded: Vec<u8>) {
        self.batch_ms += duration_ms;
        self.batch.push(Frame { seq, duration_ms, encoded });
        if self.batch_ms >= BATCH_MS {
            self.flush();
        }
    }

    /// The recording stopped: save what is left, then tell the uplink no more frames come.
    pub fn stop(&mut self) {
        self.stopping = true;
        if !self.saving {
            self.flush();
        }
    }

    /// Frames saved so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Bytes saved so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn flush(&mut self) {
        if self.saving {
            return;
        }
        if self.batch.is_empty() {
            if self.stopping {
                self.uplink.borrow_mut().stop();
            }
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_ms = 0;
        let Some(outbox) = self.outbox.clone() else {
            return self.done_saving(batch, Err(None));
        };
        self.saving = true;
        let (me, segment) = (self.me.clone(), self.segment_id.clone());
        wasm_bindgen_futures::spawn_local(async move {
            let result = outbox.save(&segment, batch.iter().map(|f| f.encoded.as_slice())).await;
            if let Some(w) = me.upgrade() {
                w.borrow_mut().done_saving(batch, result.map_err(Some));
            }
        });
    }

    fn done_saving(&mut self, batch: Vec<Frame>, result: Result<(), Option<wasm_bindgen::JsValue>>) {
        self.saving = false;
        match result {
            Ok(()) => {
                let mut uplink = self.uplink.borrow_mut();
                for f in batch {
                    self.frames += 1;
                    self.bytes += f.encoded.len() as u64;
                    uplink.saved(f.seq, f.duration_ms, f.encoded);
                }
                drop(uplink);
                (self.on_saved)(Saved::Saved { frames: self.frames, bytes: self.bytes });
            }
            Err(e) => {
                let ms = batch.iter().map(|f| f.duration_ms).sum();
                let mut uplink = self.uplink.borrow_mut();
                for f in batch {
                    uplink.unsaved(f.seq, f.duration_ms, f.encoded);
                }
                drop(uplink);
                let (message, quota) = match e {
                    Some(e) => (super::describe(&e), super::is_quota(&e)),
                    None => (crate::i18n::t(crate::i18n::Key::NoDeviceStore).to_owned(), false),
                };
                (self.on_saved)(Saved::Failed { message, quota, ms });
            }
        }
        if self.batch_ms >= BATCH_MS || self.stopping {
            self.flush();
        }
    }
}
