//! File sink benchmark (issue 3, "Performance"); prints one table, ratios measured in
//! the same run:
//!
//! A. 1,000,000 audit lines (~450 bytes) in batches, fsync per batch, rotation at
//!    64 MiB and compression on, against plain `write` + `fdatasync` of the same
//!    batches (target: at least 50 %).
//! B. Compressing a 64 MiB rotated file in the background against `gzip -6` on the
//!    same file (target: at least as fast), and the longest append while that
//!    compression runs, against a normal batch.
//!
//! `cargo bench --bench sink`. Environment: `SINK_BENCH_LINES` (1000000),
//! `SINK_BENCH_BATCH` (1000 lines), `SINK_BENCH_DIR` (a directory on the disk to
//! measure; default `target/sink-bench`).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use compartment_auditd::config::FsyncPolicy;
use compartment_auditd::sink::{FileSink, SinkOptions, SystemClock};

const MIB: u64 = 1024 * 1024;
const ROTATE_SIZE: u64 = 64 * MIB;
/// Distinct batches cycled through: far apart enough (tens of MiB) that gzip's 32 KiB
/// window never sees the repetition, so compression works on realistic input.
const POOL_BATCHES: usize = 64;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator, so every run writes the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
}

const EVENTS: &[&str] = &[
    "organization.user.invited",
    "organization.role.updated",
    "organization.assignment.created",
    "organization.git_source.sync_succeeded",
    "organization.git_source.push_received",
    "organization.settings.updated",
    "organization.sso.oidc_provider.updated",
    "organization.group.membership_changed",
];
const ORGS: &[&str] = &[
    "acme-dev",
    "acme-prod",
    "globex",
    "initech",
    "umbrella-labs",
];
const BRANCHES: &[&str] = &["main", "release/2026.05", "feature/billing", "hotfix/login"];

/// One sink line as SPEC §5 describes it, about 450 bytes.
fn line(rng: &mut Rng, id: u64) -> String {
    let org = rng.pick(ORGS);
    let ms = id * 37 % 86_400_000;
    format!(
        concat!(
            r#"{{"id":{id},"occurred_at":"2026-05-12T{h:02}:{m:02}:{s:02}.{ms:03}Z","organization_id":"{o1:08x}-{o2:04x}-4{o3:03x}-a{o4:03x}-{o5:012x}","#,
            r#""organization":"{org}","event_type":"{ev}","actor":{{"type":"user","id":"usr_{a:012x}","email":"ops-{ae}@example.com"}},"#,
            r#""target":{{"type":"git_source","id":"gs_{t:012x}"}},"project_id":null,"status":"succeeded","#,
            r#""metadata":{{"repository":"{org}/service-{r}","branch":"{br}","commit_id":"{c1:016x}{c2:016x}{c3:08x}"}}}}"#,
            "\n"
        ),
        id = id,
        h = ms / 3_600_000,
        m = ms / 60_000 % 60,
        s = ms / 1000 % 60,
        ms = ms % 1000,
        o1 = rng.next() as u32,
        o2 = rng.next() as u16,
        o3 = rng.next() % 0x1000,
        o4 = rng.next() % 0x1000,
        o5 = rng.next() % (1 << 48),
        org = org,
        ev = rng.pick(EVENTS),
        a = rng.next() % (1 << 48),
        ae = rng.next() % 40,
        t = rng.next() % (1 << 48),
        r = rng.next() % 25,
        br = rng.pick(BRANCHES),
        c1 = rng.next(),
        c2 = rng.next(),
        c3 = rng.next() as u32,
    )
}

fn batch_pool(batch_lines: usize) -> Vec<Vec<u8>> {
    let mut rng = Rng(0x5eed_cafe_f00d_d00d);
    let mut id = 0;
    (0..POOL_BATCHES)
        .map(|_| {
            let mut b = Vec::with_capacity(batch_lines * 480);
            for _ in 0..batch_lines {
                id += 1;
                b.extend_from_slice(line(&mut rng, id).as_bytes());
            }
            b
        })
        .collect()
}

/// The benchmark's scratch directory, removed however the run ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn fresh_dir(base: &Path, name: &str) -> PathBuf {
    let dir = base.join(name);
    let _ = fs::remove_dir_all(&dir);
    dir
}

/// Refuses to start on a disk without room for the run (the machine is shared).
fn ensure_space(base: &Path, needed: u64) {
    let st = rustix::fs::statvfs(base).expect("statvfs of the bench directory");
    let free = st.f_bavail * st.f_frsize;
    assert!(
        free > needed * 2,
        "only {} MiB free in {}, the benchmark needs about {} MiB",
        free / MIB,
        base.display(),
        needed / MIB
    );
}

fn opts(dir: &Path, compress_delay: Duration, rotate_size: u64) -> SinkOptions {
    SinkOptions {
        dir: dir.to_owned(),
        rotate_interval: Duration::from_secs(86_400),
        rotate_size,
        // Files of exactly `rotate_size`, as before the minimum age: at this rate
        // (far above 64 MiB/s) the daemon's files would hold a second's worth.
        rotate_min_age: Duration::ZERO,
        retention_files: 30,
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_secs(1),
        compress_delay,
        allow_group_bits: false,
    }
}

fn sink(options: SinkOptions) -> FileSink {
    match FileSink::open(options, Arc::new(SystemClock)) {
        Ok((sink, _)) => sink,
        Err(e) => panic!("opening the sink failed: {e}"),
    }
}

fn append(sink: &mut FileSink, batch: &[u8]) {
    if let Err(e) = sink.append(batch) {
        panic!("append failed: {e}");
    }
}

fn names_ending(dir: &Path, suffix: &str) -> usize {
    fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("audit-") && n.ends_with(suffix)
                })
                .count()
        })
        .unwrap_or(0)
}

struct Stats {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Stats {
    fn percentile(&self, p: f64) -> Duration {
        let mut v = self.latencies.clone();
        v.sort_unstable();
        v[((v.len() - 1) as f64 * p).round() as usize]
    }
    fn max(&self) -> Duration {
        self.latencies.iter().copied().max().unwrap_or_default()
    }
}

fn baseline(dir: &Path, pool: &[Vec<u8>], batches: usize) -> Stats {
    fs::create_dir_all(dir).unwrap();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("plain.ndjson"))
        .unwrap();
    let mut latencies = Vec::with_capacity(batches);
    let started = Instant::now();
    for i in 0..batches {
        let t = Instant::now();
        f.write_all(&pool[i % pool.len()]).unwrap();
        f.sync_data().unwrap();
        latencies.push(t.elapsed());
    }
    Stats {
        elapsed: started.elapsed(),
        latencies,
    }
}

fn with_sink(dir: &Path, pool: &[Vec<u8>], batches: usize, compress: bool) -> (Stats, Duration) {
    let delay = if compress {
        Duration::ZERO
    } else {
        Duration::from_secs(86_400)
    };
    let mut s = sink(opts(dir, delay, ROTATE_SIZE));
    let mut latencies = Vec::with_capacity(batches);
    let started = Instant::now();
    for i in 0..batches {
        let t = Instant::now();
        append(&mut s, &pool[i % pool.len()]);
        latencies.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    // The background compressor catches up after the last append.
    while compress && names_ending(dir, ".ndjson") > 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let drained = started.elapsed();
    s.close().unwrap();
    (Stats { elapsed, latencies }, drained)
}

/// Fills one 64 MiB rotated file (left plain) and returns its path.
fn rotated_64mib(dir: &Path, pool: &[Vec<u8>]) -> PathBuf {
    let mut s = sink(opts(dir, Duration::from_secs(86_400), ROTATE_SIZE));
    let mut i = 0;
    while names_ending(dir, ".ndjson") == 0 {
        append(&mut s, &pool[i % pool.len()]);
        i += 1;
    }
    s.close().unwrap();
    fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("audit-") && n.ends_with(".ndjson")
        })
        .unwrap()
}

fn gzip_6(file: &Path, out: &Path) -> Duration {
    let started = Instant::now();
    let status = Command::new("gzip")
        .args(["-6", "-c"])
        .arg(file)
        .stdout(File::create(out).unwrap())
        .stderr(Stdio::inherit())
        .status()
        .expect("gzip runs");
    assert!(status.success());
    started.elapsed()
}

/// Appends one batch per millisecond — a steady stream — until `until` says stop,
/// returning the latency of each append. At most `MAX_BATCHES` are written: the
/// disk is shared, and a slow compressor must not turn into gigabytes.
fn paced_appends(
    s: &mut FileSink,
    pool: &[Vec<u8>],
    mut until: impl FnMut(usize) -> bool,
) -> Vec<Duration> {
    const MAX_BATCHES: usize = 3000;
    let mut latencies = Vec::new();
    let mut i = 0;
    while !until(i) {
        if i < MAX_BATCHES {
            let t = Instant::now();
            append(s, &pool[i % pool.len()]);
            latencies.push(t.elapsed());
            i += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    latencies
}

/// Opens a sink on a directory holding one due plain rotated file and appends while
/// the compressor works; returns the compression time (open → `.gz` complete, plain
/// removed) and the append latencies. The active file cannot rotate here.
fn compress_while_appending(
    dir: &Path,
    plain: &Path,
    pool: &[Vec<u8>],
) -> (Duration, Vec<Duration>) {
    let started = Instant::now();
    let mut s = sink(opts(dir, Duration::ZERO, u64::MAX));
    let latencies = paced_appends(&mut s, pool, |_| !plain.exists());
    let done = started.elapsed();
    s.close().unwrap();
    (done, latencies)
}

/// The same paced appends, as many, with no compression running: the control.
fn appends_without_compression(dir: &Path, pool: &[Vec<u8>], batches: usize) -> Vec<Duration> {
    let mut s = sink(opts(dir, Duration::from_secs(86_400), u64::MAX));
    let latencies = paced_appends(&mut s, pool, |i| i >= batches);
    s.close().unwrap();
    latencies
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort_unstable();
    v[v.len() / 2]
}

fn pooled(runs: &[Stats]) -> Stats {
    Stats {
        elapsed: runs.iter().map(|r| r.elapsed).min().unwrap_or_default(),
        latencies: runs
            .iter()
            .flat_map(|r| r.latencies.iter().copied())
            .collect(),
    }
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB as f64 / d.as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let lines = env_usize("SINK_BENCH_LINES", 1_000_000);
    let batch_lines = env_usize("SINK_BENCH_BATCH", 1000);
    let base = std::env::var_os("SINK_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/sink-bench"));
    fs::create_dir_all(&base).unwrap();
    let _scratch = Scratch(base.clone());

    let pool = batch_pool(batch_lines);
    let batches = lines.div_ceil(batch_lines);
    let avg_batch: u64 = pool.iter().map(|b| b.len() as u64).sum::<u64>() / pool.len() as u64;
    let total_bytes: u64 = (0..batches)
        .map(|i| pool[i % pool.len()].len() as u64)
        .sum();
    println!(
        "compartment-auditd sink benchmark: {lines} lines, {batch_lines} lines/batch ({:.0} B/line, {:.0} KiB/batch), {} batches, {:.0} MiB, dir {}",
        avg_batch as f64 / batch_lines as f64,
        avg_batch as f64 / 1024.0,
        batches,
        total_bytes as f64 / MIB as f64,
        base.display()
    );

    ensure_space(&base, total_bytes + 512 * MIB);
    let rounds = env_usize("SINK_BENCH_ROUNDS", 3).max(1);
    println!(
        "{rounds} rounds, variants interleaved in rotating order; best and median per variant"
    );

    // A. Throughput; every run's files are removed right after it.
    const BASELINE: usize = 0;
    const GZIP_ON: usize = 1;
    const DEFERRED: usize = 2;
    let names = [
        "write + fdatasync",
        "FileSink: rotation 64 MiB, gzip on (delay 0)",
        "FileSink: rotation 64 MiB, gzip deferred",
    ];
    let mut runs: [Vec<Stats>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut drained = Vec::new();
    let mut rotations = 0;
    for round in 0..rounds {
        for k in 0..3 {
            let variant = (round + k) % 3;
            let dir = fresh_dir(&base, "run");
            match variant {
                BASELINE => runs[BASELINE].push(baseline(&dir, &pool, batches)),
                GZIP_ON => {
                    let (st, d) = with_sink(&dir, &pool, batches, true);
                    rotations = names_ending(&dir, ".ndjson.gz");
                    drained.push(d);
                    runs[GZIP_ON].push(st);
                }
                _ => runs[DEFERRED].push(with_sink(&dir, &pool, batches, false).0),
            }
            fs::remove_dir_all(&dir).unwrap();
        }
    }
    let best = |v: usize| runs[v].iter().map(|r| r.elapsed).min().unwrap_or_default();
    let med = |v: usize| median(runs[v].iter().map(|r| r.elapsed).collect());

    println!();
    println!("A. Append throughput, fsync per batch");
    println!("| run | best | median | MiB/s (best) | batch p50 | batch p99 | batch max |");
    println!("|---|---|---|---|---|---|---|");
    for v in [BASELINE, GZIP_ON, DEFERRED] {
        let all = pooled(&runs[v]);
        println!(
            "| {} | {:.2} s | {:.2} s | {:.0} | {} | {} | {} |",
            names[v],
            best(v).as_secs_f64(),
            med(v).as_secs_f64(),
            mib_s(total_bytes, best(v)),
            ms(all.percentile(0.5)),
            ms(all.percentile(0.99)),
            ms(all.max()),
        );
    }
    let ratio = |v: usize, f: &dyn Fn(usize) -> Duration| {
        f(BASELINE).as_secs_f64() / f(v).as_secs_f64() * 100.0
    };
    println!(
        "Throughput vs write + fdatasync: gzip on {:.0} % (best) / {:.0} % (median), target >= 50 %; gzip deferred {:.0} % / {:.0} %",
        ratio(GZIP_ON, &best),
        ratio(GZIP_ON, &med),
        ratio(DEFERRED, &best),
        ratio(DEFERRED, &med),
    );
    println!(
        "With gzip on: {rotations} rotations per run; every file compressed {:.2} s (median) after the run started",
        median(drained).as_secs_f64()
    );

    // B. Compression of one 64 MiB rotated file, against gzip -6 on the same bytes.
    let cdir = fresh_dir(&base, "compress");
    let plain = rotated_64mib(&cdir, &pool);
    let plain_len = fs::metadata(&plain).unwrap().len();
    let template = base.join("rotated-template.ndjson");
    fs::copy(&plain, &template).unwrap();
    let gz_out = base.join("gzip-output.ndjson.gz");
    let mut gzip_times = Vec::new();
    let mut sink_times = Vec::new();
    let mut during = Vec::new();
    let mut control = Vec::new();
    let mut gzip_len = 0;
    let mut sink_gz_len = 0;
    for _ in 0..rounds {
        if !plain.exists() {
            fs::copy(&template, &plain).unwrap();
        }
        for f in fs::read_dir(&cdir).unwrap().filter_map(Result::ok) {
            if f.file_name().to_string_lossy().ends_with(".ndjson.gz") {
                fs::remove_file(f.path()).unwrap();
            }
        }
        // Same page-cache state for both readers.
        let _ = fs::read(&template);
        let _ = fs::read(&plain);
        gzip_times.push(gzip_6(&template, &gz_out));
        gzip_len = fs::metadata(&gz_out).unwrap().len();
        let (t, lat) = compress_while_appending(&cdir, &plain, &pool);
        sink_times.push(t);
        sink_gz_len = fs::read_dir(&cdir)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".ndjson.gz"))
            .map(|e| e.metadata().unwrap().len())
            .sum();
        let n = lat.len();
        during.extend(lat);
        let cdir2 = fresh_dir(&base, "control");
        control.extend(appends_without_compression(&cdir2, &pool, n));
        fs::remove_dir_all(&cdir2).unwrap();
        // Keep the directory small: the active file grew during the run.
        let _ = fs::remove_file(cdir.join("audit.ndjson"));
    }
    let gzip_best = gzip_times.iter().copied().min().unwrap_or_default();
    let sink_best = sink_times.iter().copied().min().unwrap_or_default();
    let during = Stats {
        elapsed: Duration::ZERO,
        latencies: during,
    };
    let control = Stats {
        elapsed: Duration::ZERO,
        latencies: control,
    };

    println!();
    println!(
        "B. Compressing a {:.0} MiB rotated file",
        plain_len as f64 / MIB as f64
    );
    println!("| compressor | best | median | MiB/s (best) | output |");
    println!("|---|---|---|---|---|");
    println!(
        "| gzip -6 (no fsync) | {:.2} s | {:.2} s | {:.0} | {:.1} MiB |",
        gzip_best.as_secs_f64(),
        median(gzip_times.clone()).as_secs_f64(),
        mib_s(plain_len, gzip_best),
        gzip_len as f64 / MIB as f64
    );
    println!(
        "| FileSink background, level 6 (+ fsync, rename; appends running) | {:.2} s | {:.2} s | {:.0} | {:.1} MiB |",
        sink_best.as_secs_f64(),
        median(sink_times.clone()).as_secs_f64(),
        mib_s(plain_len, sink_best),
        sink_gz_len as f64 / MIB as f64
    );
    println!(
        "Speed vs gzip -6: {:.2}x (best) / {:.2}x (median), target >= 1x",
        gzip_best.as_secs_f64() / sink_best.as_secs_f64(),
        median(gzip_times).as_secs_f64() / median(sink_times).as_secs_f64(),
    );
    println!("| appends, one batch per ms | batches | p50 | p99 | max |");
    println!("|---|---|---|---|---|");
    for (name, st) in [
        ("while a 64 MiB file is compressed", &during),
        ("control: no compression", &control),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            st.latencies.len(),
            ms(st.percentile(0.5)),
            ms(st.percentile(0.99)),
            ms(st.max()),
        );
    }
}
