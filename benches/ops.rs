//! Criterion benchmarks of the CPU ops (filled in by the benchmarks issue).

use criterion::{criterion_group, criterion_main, Criterion};

fn ops(_c: &mut Criterion) {}

criterion_group!(benches, ops);
criterion_main!(benches);
