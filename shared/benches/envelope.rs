//! The relay's per-frame envelope: `write_json` (serializes every field for every frame) beside
//! `EnvelopeTemplate::write_json` (the recording's fields serialized once), for 200 ms and 1 s frames.
//!
//! `cargo bench -p soundline-shared --bench envelope` (numbers in BENCHMARKS.md).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use soundline_shared::envelope::{EnvelopeTemplate, Stamp, write_json};
use soundline_shared::recording::{DeviceInfo, LocationInfo, Recording};

fn envelopes(c: &mut Criterion) {
    let stamp = Stamp { ver: "1.0".into(), ..Stamp::default() };
    let recording = Recording {
        device: DeviceInfo { car_id: "CAR-042".into(), rail_type: 2 },
        location: LocationInfo { unit_id: "depot-7".into(), sty: "track 3".into() },
        segment_id: "CAR-042-20261201T101500-3f2a".into(),
        inspection_info: "left bogie, wheel 3: a flat spot heard at low speed".into(),
    };
    let template = EnvelopeTemplate::new(&stamp, &recording);
    let uuid = "6f1c2a9e-3b7d-4c1e-9a52-0d4e8b7f3a21";
    for frame_ms in [200usize, 1000] {
        let pcm: Vec<u8> = (0..frame_ms * 32).map(|i| (i * 7919 % 251) as u8).collect();
        let mut group = c.benchmark_group(format!("envelope-{frame_ms}ms"));
        group.throughput(Throughput::Elements(1));
        group.sample_size(20).measurement_time(std::time::Duration::from_secs(3));
        group.bench_function("write_json", |b| {
            b.iter(|| {
                let mut out = Vec::new();
                write_json(uuid, &stamp, &recording, 1_764_000_000_000, &pcm, &mut out);
                out
            })
        });
        group.bench_function("template", |b| {
            b.iter(|| {
                let mut out = Vec::new();
                template.write_json(uuid, 1_764_000_000_000, &pcm, &mut out);
                out
            })
        });
        group.finish();
    }
}

criterion_group!(benches, envelopes);
criterion_main!(benches);
