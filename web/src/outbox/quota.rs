//! How full the device's storage is for waiting audio, and what the page does about it: a red warning well
//! before the end, and a stop (with a message saying so) before the last write would fail.
//!
//! Where it sits: the page asks [`estimate`] every few seconds while it records and shows [`Level`]. The bound is
//! the browser's quota (`navigator.storage.estimate()`), or a smaller cap (`?outboxCapKb=N`, for tests and for
//! devices whose owners want one). Pure arithmetic here, tested natively; the browser call is [`estimate`].

/// Of the bound: warn from here.
pub const WARN_AT: f64 = 0.8;
/// Of the bound: stop recording from here (what is left is headroom for the frames already under way).
pub const STOP_AT: f64 = 0.95;

/// What the page says about storage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Level {
    /// Plenty of room: `left_ms` of recording.
    Ok {
        /// Audio that still fits before the warning's threshold, ms.
        left_ms: u64,
    },
    /// Past [`WARN_AT`]: red, with what is left before recording stops.
    Warn {
        /// Audio that still fits before recording stops, ms.
        left_ms: u64,
    },
    /// Past [`STOP_AT`]: recording stops; everything recorded is kept.
    Full,
}

/// The level, given the outbox's bytes, the browser's usage and quota for the origin (`None`: unknown), an
/// optional cap, and the bytes of a second of audio.
pub fn level(outbox_bytes: u64, usage: Option<f64>, quota: Option<f64>, cap: Option<u64>, bytes_per_s: u64) -> Level {
    // The room the outbox may grow into: the browser's free quota (usage includes the outbox already), capped.
    let browser = match (usage, quota) {
        (Some(u), Some(q)) if q > 0.0 => Some(outbox_bytes as f64 + (q - u).max(0.0)),
        _ => None,
    };
    let bound = match (browser, cap) {
        (Some(b), Some(c)) => b.min(c as f64),
        (Some(b), None) => b,
        (None, Some(c)) => c as f64,
        (None, None) => return Level::Ok { left_ms: u64::MAX },
    };
    let used = outbox_bytes as f64;
    let ms_until = |fraction: f64| (((bound * fraction - used).max(0.0)) / bytes_per_s.max(1) as f64 * 1000.0) as u64;
    if used >= bound * STOP_AT {
        Level::Full
    } else if used >= bound * WARN_AT {
        Level::Warn { left_ms: ms_until(STOP_AT) }
    } else {
        Level::Ok { left_ms: ms_until(STOP_AT) }
    }
}

/// The browser's `(usage, quota)` for this origin, when it says.
pub async fn estimate() -> (Option<f64>, Option<f64>) {
    use wasm_bindgen::JsCast;
    let Some(storage) = web_sys::window().map(|w| w.navigator().storage()) else { return (None, None) };
    let Ok(promise) = storage.estimate() else { return (None, None) };
    match wasm_bindgen_futures::JsFuture::from(promise).await.map(|e| e.unchecked_into::<web_sys::StorageEstimate>()) {
        Ok(e) => (e.get_usage(), e.get_quota()),
        Err(_) => (None, None),
    }
}

/// Asks the browser to keep the outbox under storage pressure; whether it will (`None`: it cannot say).
pub async fn persist() -> Option<bool> {
    let storage = web_sys::window()?.navigator().storage();
    let promise = storage.persist().ok()?;
    wasm_bindgen_futures::JsFuture::from(promise).await.ok()?.as_bool()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 32_100;

    #[test]
    fn a_cap_warns_at_80_percent_and_stops_at_95() {
        let cap = Some(100 * SECOND);
        assert_eq!(level(0, None, None, cap, SECOND), Level::Ok { left_ms: 95_000 });
        assert_eq!(level(79 * SECOND, None, None, cap, SECOND), Level::Ok { left_ms: 16_000 });
        assert_eq!(level(80 * SECOND, None, None, cap, SECOND), Level::Warn { left_ms: 15_000 });
        assert_eq!(level(95 * SECOND, None, None, cap, SECOND), Level::Full);
    }

    #[test]
    fn the_browser_quota_bounds_when_it_is_smaller() {
        // 10 s of audio in the outbox, the origin uses 1 MB more than that, the quota leaves 20 s free.
        let used = 10 * SECOND;
        let usage = (used + 1_000_000) as f64;
        let quota = usage + (20 * SECOND) as f64;
        match level(used, Some(usage), Some(quota), Some(1 << 40), SECOND) {
            Level::Ok { left_ms } => assert_eq!(left_ms, 18_500, "95 % of 30 s, less the 10 s stored"),
            other => panic!("{other:?}"),
        }
        assert_eq!(level(0, None, None, None, SECOND), Level::Ok { left_ms: u64::MAX }, "unknown: no bound");
    }
}
