//! The web crate's pure parts, run as WebAssembly in headless Chromium (wasm-bindgen-test + chromedriver):
//! the same pipeline and resend buffer the page uses, checked where they run.
#![cfg(target_arch = "wasm32")]

use soundline_web::pipeline::Pipeline;
use soundline_web::uplink::{Backoff, ResendBuffer};
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
    let mut backoff = Backoff::default();
    assert_eq!(backoff.next_delay_ms(0.0), 250);
}
