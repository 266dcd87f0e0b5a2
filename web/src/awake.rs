//! The screen stays on while the page records or uploads (a phone that sleeps mid-recording stops its
//! microphone, and a sleeping phone uploads nothing): a screen wake lock, taken again whenever the page becomes
//! visible (the browser drops it when the page is hidden), released when nothing needs it.
//!
//! Where it sits: beside the page, which says when it is needed ([`Awake::set`]) and shows what the browser
//! answered.

use std::cell::RefCell;
use std::rc::Rc;

use js_sys::{Function, Promise, Reflect};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::Element;

use crate::i18n::{Key, t, tf};

struct State {
    wanted: bool,
    /// The browser's `WakeLockSentinel` while held.
    sentinel: Option<JsValue>,
    requesting: bool,
    shown: Element,
    /// Takes the lock again when the page is visible again; holds this wake lock weakly.
    on_visible: Option<gloo_events::EventListener>,
}

/// The page's wake lock; cheap to clone.
#[derive(Clone)]
pub struct Awake(Rc<RefCell<State>>);

impl Awake {
    /// A wake lock that shows its state in `shown`; taken again when the page becomes visible.
    pub fn new(shown: Element) -> Self {
        let state = State { wanted: false, sentinel: None, requesting: false, shown, on_visible: None };
        let awake = Self(Rc::new(RefCell::new(state)));
        let weak = Rc::downgrade(&awake.0);
        if let Some(doc) = web_sys::window().and_then(|w| w.document()) {
            let listener = gloo_events::EventListener::new(&doc, "visibilitychange", move |_| {
                let visible = web_sys::window()
                    .and_then(|w| w.document())
                    .is_some_and(|d| d.visibility_state() == web_sys::VisibilityState::Visible);
                if let (true, Some(state)) = (visible, weak.upgrade()) {
                    // The browser released it when the page was hidden.
                    let again = Awake(state);
                    again.0.borrow_mut().sentinel = None;
                    again.sync();
                }
            });
            awake.0.borrow_mut().on_visible = Some(listener);
        }
        awake
    }

    /// Whether the screen should stay on.
    pub fn set(&self, wanted: bool) {
        self.0.borrow_mut().wanted = wanted;
        self.sync();
    }

    fn sync(&self) {
        let mut s = self.0.borrow_mut();
        if !s.wanted {
            if let Some(sentinel) = s.sentinel.take()
                && let Ok(release) = Reflect::get(&sentinel, &"release".into()).and_then(|f| f.dyn_into::<Function>())
            {
                let _ = release.call0(&sentinel);
            }
            s.shown.set_text_content(None);
            return;
        }
        if s.sentinel.is_some() || s.requesting {
            return;
        }
        let Some(lock) = web_sys::window()
            .map(|w| w.navigator())
            .and_then(|n| Reflect::get(&n, &"wakeLock".into()).ok())
            .filter(|l| !l.is_undefined())
        else {
            s.shown.set_text_content(Some(t(Key::ScreenNoLock)));
            return;
        };
        let Ok(request) = Reflect::get(&lock, &"request".into()).and_then(|f| f.dyn_into::<Function>()) else { return };
        let Ok(promise) = request.call1(&lock, &"screen".into()).and_then(|p| p.dyn_into::<Promise>()) else { return };
        s.requesting = true;
        let me = self.clone();
        wasm_bindgen_futures::spawn_local(async move {
            let got = JsFuture::from(promise).await;
            let mut s = me.0.borrow_mut();
            s.requesting = false;
            match got {
                Ok(sentinel) => {
                    s.shown.set_text_content(Some(t(Key::ScreenOn)));
                    s.sentinel = Some(sentinel);
                    let wanted = s.wanted;
                    drop(s);
                    if !wanted {
                        me.sync();
                    }
                }
                Err(e) => {
                    let why = Reflect::get(&e, &"message".into()).ok().and_then(|m| m.as_string()).unwrap_or_default();
                    s.shown.set_text_content(Some(&tf(Key::ScreenMaySleep, &[&why])));
                }
            }
        });
    }
}
