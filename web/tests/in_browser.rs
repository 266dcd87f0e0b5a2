//! The web crate's pure parts, run as WebAssembly in headless Chromium (wasm-bindgen-test + chromedriver):
//! the same pipeline and resend buffer the page uses, checked where they run.
#![cfg(target_arch = "wasm32")]

use soundline_web::pipeline::Pipeline;
use soundline_web::uplink::ResendBuffer;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

#[wasm_bindgen_test]
fn a_44_1_khz_tone_comes_out_as_16_khz_frames_at_its_level() {
    let mut p = Pipeline::new(44_100, 200, 1_000.0).expect("44.1 kHz");
    let mut frames = Vec::new();
    let block: Vec<f32> =
        (0..882).map(|i| (0.5 * (2.0 * std::f64::consts::PI * 1000.0 * i as f64 / 44_100.0).sin()) as f32).collect();
    // 1 s of a 1 kHz tone (882 samples = 20 whole periods per block).
    for _ in 0..50 {
        p.push(&block, &mut frames);
    }
    assert_eq!(frames.len(), 4, "four full 200 ms frames so far");
    assert_eq!(frames.iter().map(|f| f.seq).collect::<Vec<_>>(), [0, 1, 2, 3]);
    assert_eq!(frames[1].capture_ts_ms, 1_200);
    let peak = frames[2].samples.iter().map(|s| s.unsigned_abs()).max().unwrap_or_default();
    assert!((16_000..=16_500).contains(&peak), "peak {peak} of a 0.5 tone (16384)");
}

#[wasm_bindgen_test]
fn the_resend_buffer_keeps_unacked_frames_in_order() {
    let mut b = ResendBuffer::new(1 << 20);
    for seq in 0..4 {
        b.push(seq, 200, vec![seq as u8; 8]);
    }
    assert!(b.ack(0) && b.ack(2));
    assert_eq!(b.unacked().map(|(s, _)| s).collect::<Vec<_>>(), [1, 3]);
    let mut backoff = soundline_web::uplink::reconnect_backoff();
    assert_eq!(backoff.next_delay(0.0).as_millis(), 250);
}

mod outbox {
    //! The outbox store in IndexedDB itself: write, ack, reopen, and recovery after a transaction that never
    //! committed (as a crash or a closed tab leaves one).
    use soundline_shared::frame;
    use soundline_shared::recording::{DeviceInfo, Recording};
    use soundline_web::outbox::{Outbox, Stored};
    use wasm_bindgen::JsCast;
    use wasm_bindgen_test::*;

    fn stored(segment: &str, started_ms: f64) -> Stored {
        Stored {
            recording: Recording {
                device: DeviceInfo { car_id: "CAR-7".into(), rail_type: 2 },
                segment_id: segment.into(),
                inspection_info: "bearing 3".into(),
                ..Recording::default()
            },
            frame_ms: 200,
            started_ms,
        }
    }

    fn frame(seq: u32) -> Vec<u8> {
        let samples: Vec<i16> = (0..3200).map(|i| (i as i16).wrapping_mul(seq as i16 + 1)).collect();
        frame::encode_to_vec(seq, 1_000 + i64::from(seq) * 200, &samples)
    }

    #[wasm_bindgen_test]
    async fn frames_survive_a_reopen_leave_when_acked_and_an_aborted_write_leaves_nothing() {
        let name = format!("soundline-outbox-test-{}", js_sys::Math::random());
        let outbox = Outbox::open_named(&name).await.expect("open");
        outbox.begin(&stored("seg-b", 2_000.0)).await.expect("begin b");
        outbox.begin(&stored("seg-a", 1_000.0)).await.expect("begin a");
        let frames: Vec<Vec<u8>> = (0..5).map(frame).collect();
        outbox.save("seg-a", frames.iter().map(Vec::as_slice)).await.expect("save");

        // A write that never commits: the transaction is aborted, as a crash leaves it.
        let db = {
            let factory = web_sys::window().unwrap().indexed_db().unwrap().unwrap();
            let open = factory.open(&name).unwrap();
            let (tx, rx) = futures_channel();
            let cb = wasm_bindgen::closure::Closure::once_into_js(move || tx());
            open.set_onsuccess(Some(cb.unchecked_ref()));
            rx.await;
            open.result().unwrap().dyn_into::<web_sys::IdbDatabase>().unwrap()
        };
        let tx = db.transaction_with_str_and_mode("frames", web_sys::IdbTransactionMode::Readwrite).unwrap();
        let key = js_sys::Array::of2(&"seg-a".into(), &5.into());
        tx.object_store("frames").unwrap().put_with_key(&js_sys::Uint8Array::from(&frame(5)[..]), &key).unwrap();
        tx.abort().unwrap();
        db.close();

        outbox.close();
        let outbox = Outbox::open_named(&name).await.expect("reopen");
        let (waiting, bad) = outbox.recordings().await.expect("recordings");
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(waiting.len(), 2);
        assert_eq!(waiting[0].stored, stored("seg-a", 1_000.0), "oldest first, metadata as written");
        assert_eq!((waiting[0].frames, waiting[0].seqs), (5, Some((0, 4))), "the aborted frame 5 is not there");
        assert_eq!((waiting[1].frames, waiting[1].seqs), (0, None));

        let (loaded, bad) = outbox.load("seg-a", 1, 3).await.expect("load");
        assert!(bad.is_empty());
        assert_eq!(loaded.iter().map(|f| f.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(loaded[1].encoded, frames[2], "byte for byte");
        assert_eq!(loaded[0].duration_ms, 200);

        outbox.acked("seg-a", &[0, 1]).await.expect("acked");
        let (waiting, _) = outbox.recordings().await.expect("recordings");
        assert_eq!((waiting[0].frames, waiting[0].seqs), (3, Some((2, 4))));
        outbox.finish("seg-a").await.expect("finish");
        outbox.finish("seg-b").await.expect("finish");
        assert!(outbox.recordings().await.expect("recordings").0.is_empty());
        outbox.close();
    }

    /// A one-shot signal without a futures crate: the sender is a closure, the receiver a future.
    fn futures_channel() -> (impl FnOnce(), impl std::future::Future<Output = ()>) {
        let mut resolve = None;
        let promise = js_sys::Promise::new(&mut |r, _| resolve = Some(r));
        let resolve = resolve.unwrap();
        (move || drop(resolve.call0(&wasm_bindgen::JsValue::NULL)), async move {
            let _ = wasm_bindgen_futures::JsFuture::from(promise).await;
        })
    }
}

/// The spectrogram the page draws, computed as WebAssembly: a two-tone recording's strongest bins are its tones.
#[wasm_bindgen_test]
fn the_spectrogram_of_two_tones_peaks_at_both() {
    use soundline_web::recordings::spectrogram::{HZ_PER_BIN, Spectrogram};
    let samples: Vec<i16> = (0..16_000 * 2)
        .map(|i| {
            let t = f64::from(i) / 16_000.0;
            let x = 0.3 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()
                + 0.3 * (2.0 * std::f64::consts::PI * 3_500.0 * t).sin();
            (x * 32767.0).round() as i16
        })
        .collect();
    let s = Spectrogram::of(&samples);
    let mut peaks = s.strongest(2);
    peaks.sort_by(f64::total_cmp);
    assert_eq!(peaks.len(), 2);
    assert!((peaks[0] - 1_000.0).abs() <= HZ_PER_BIN && (peaks[1] - 3_500.0).abs() <= HZ_PER_BIN, "{peaks:?}");
}
