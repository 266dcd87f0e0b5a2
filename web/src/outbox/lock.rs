//! One uploader per recording across the page's tabs: a Web Lock (`navigator.locks`) named after the segment,
//! held by the tab that records or uploads it, released when that is done or the tab dies.
//!
//! Where it sits: beside the outbox. A tab that finds an earlier page's recording in the outbox uploads it only
//! if it gets the lock (`ifAvailable`: never waits for one); a recording tab takes its own segment's lock before
//! it writes the first frame.

use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    /// `navigator.locks` (web-sys has it only behind its unstable APIs).
    type LockManager;
    #[wasm_bindgen(method, js_name = request)]
    fn request_with_callback(this: &LockManager, name: &str, options: &JsValue, callback: &JsValue) -> Promise;
}

/// A lock this tab holds; released by [`Held::release`] (or when the tab goes away).
pub struct Held {
    release: Option<Function>,
}

impl Held {
    /// Gives the lock up.
    pub fn release(mut self) {
        if let Some(f) = self.release.take() {
            let _ = f.call0(&JsValue::NULL);
        }
    }
}

/// The lock name of a recording.
fn name(segment_id: &str) -> String {
    format!("soundline-upload:{segment_id}")
}

/// Takes the lock of `segment_id` if no other tab holds it: `Ok(None)` when one does. A browser without Web
/// Locks (before Safari 15.4) has one uploader per tab and none across tabs: the lock is then always granted.
///
/// # Errors
///
/// The browser refused the request (an opaque origin).
pub async fn try_lock(segment_id: &str) -> Result<Option<Held>, JsValue> {
    let navigator = web_sys::window().ok_or("no window")?.navigator();
    let locks = Reflect::get(&navigator, &"locks".into())?;
    if locks.is_undefined() || locks.is_null() {
        return Ok(Some(Held { release: None }));
    }
    let locks: LockManager = locks.unchecked_into();
    // The callback answers `granted` with whether the lock came, and returns a promise that holds the lock until
    // `release` resolves it.
    let mut release = None;
    let hold = Promise::new(&mut |resolve, _| release = Some(resolve));
    let mut answer = None;
    let granted = Promise::new(&mut |resolve, reject| answer = Some((resolve, reject)));
    let (answer, refuse) = answer.ok_or("no promise executor")?;
    let callback = Closure::once_into_js(move |lock: JsValue| -> JsValue {
        let got = !lock.is_null();
        let _ = answer.call1(&JsValue::NULL, &got.into());
        if got { hold.into() } else { JsValue::UNDEFINED }
    });
    let options = Object::new();
    Reflect::set(&options, &"ifAvailable".into(), &true.into())?;
    let request = locks.request_with_callback(&name(segment_id), &options, &callback);
    // The request settles when the lock is released; a refused one rejects instead of calling back.
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = JsFuture::from(request).await {
            let _ = refuse.call1(&JsValue::NULL, &e);
        }
    });
    let got = JsFuture::from(granted).await?.as_bool().unwrap_or(false);
    Ok(got.then_some(Held { release }))
}
