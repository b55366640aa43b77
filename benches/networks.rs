//! Longest-prefix lookups in the network catalogue (`track::networks`): 100 000 prefixes, as
//! many as Apple's iCloud Private Relay egress list plus the scanners' ranges, half IPv4 and
//! half IPv6, nested at random; lookups of random addresses, most of them inside some prefix.
//!
//! `cargo bench --bench networks` prints the time per lookup and the lookups per second;
//! the figure is in `bench/RESULTS.md` (target: at least 1 000 000 lookups/s).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pixelrelay::track::networks::{Catalogue, HEADER};

/// A small deterministic generator (xorshift64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const PREFIXES: usize = 100_000;

/// A catalogue text of `PREFIXES` rows, and sample addresses.
fn catalogue(rng: &mut Rng) -> (String, Vec<IpAddr>) {
    let mut text = format!("{HEADER}\n");
    let mut samples = Vec::new();
    for i in 0..PREFIXES {
        let kind = if i % 3 == 0 { "scanner" } else { "apple" };
        let (addr, len): (IpAddr, u32) = if i % 2 == 0 {
            let len = 16 + (rng.next() % 17) as u32;
            (Ipv4Addr::from(rng.next() as u32).into(), len)
        } else {
            // Apple's list is mostly /64s and /45s inside a few /24-/32 allocations.
            let top = 0x2a02_26f7u128 << 96;
            let a = top | (u128::from(rng.next()) << 32) | u128::from(rng.next() as u32);
            let len = 40 + (rng.next() % 25) as u32;
            (Ipv6Addr::from(a).into(), len)
        };
        text.push_str(&format!("{addr}/{len},{kind},row {i},probable,bench\n"));
        samples.push(addr);
    }
    // Half the lookups hit a listed prefix (its own address), half random addresses.
    let mut lookups = Vec::with_capacity(4096);
    for i in 0..4096 {
        lookups.push(if i % 2 == 0 {
            samples[(rng.next() % samples.len() as u64) as usize]
        } else if i % 4 == 1 {
            Ipv4Addr::from(rng.next() as u32).into()
        } else {
            Ipv6Addr::from((0x2a02_26f7u128 << 96) | u128::from(rng.next())).into()
        });
    }
    (text, lookups)
}

fn lookups(c: &mut Criterion) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (text, addrs) = catalogue(&mut rng);
    let started = Instant::now();
    let cat = Catalogue::parse(&[("bench", &text)]).expect("catalogue");
    eprintln!(
        "networks: {PREFIXES} prefixes parsed and flattened into {} ranges in {:?}",
        cat.ranges(),
        started.elapsed()
    );
    let found = addrs.iter().filter(|a| cat.lookup(**a).is_some()).count();
    eprintln!(
        "networks: {found} of {} sample addresses listed",
        addrs.len()
    );

    let mut g = c.benchmark_group("networks");
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("lookup_100k_prefixes", |b| {
        b.iter(|| {
            let mut hits = 0usize;
            for a in &addrs {
                hits += usize::from(cat.lookup(black_box(*a)).is_some());
            }
            black_box(hits)
        })
    });
    g.finish();

    // One plain figure besides criterion's: lookups per second over a fixed run.
    let rounds = 500;
    let started = Instant::now();
    let mut hits = 0usize;
    for _ in 0..rounds {
        for a in &addrs {
            hits += usize::from(cat.lookup(black_box(*a)).is_some());
        }
    }
    let secs = started.elapsed().as_secs_f64();
    black_box(hits);
    eprintln!(
        "networks: {:.0} lookups/s ({} lookups in {secs:.3} s)",
        (rounds * addrs.len()) as f64 / secs,
        rounds * addrs.len()
    );
}

criterion_group!(benches, lookups);
criterion_main!(benches);
