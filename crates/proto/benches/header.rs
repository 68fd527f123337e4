//! Encode and decode+validate of one header. Run with `cargo xtask bench proto`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use streamproxy_proto::{Header, MAX_HEADER_LEN, Version};

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("header");
    for version in Version::ALL {
        let header = Header::new("service.internal.example", "8443")
            .expect("valid")
            .with_version(version);
        let bytes = header.to_bytes().expect("encodes");

        group.bench_function(format!("encode/{version}"), |b| {
            let mut out = [0u8; MAX_HEADER_LEN];
            b.iter(|| black_box(&header).encode(black_box(&mut out)))
        });
        group.bench_function(format!("decode_validate/{version}"), |b| {
            b.iter(|| {
                let h = Header::decode(black_box(&bytes)).expect("valid");
                black_box((h.host(), h.port()))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
