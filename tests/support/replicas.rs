//! A sink group of real daemon processes (docs/replicas.md): several replicas with one
//! `file_sink.id`, a directory each, and the oracle that checks what they wrote
//! together — the union holds every committed event, duplicates across replicas come
//! only in runs at handovers, and only one directory grows at a time.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::writers::Writers;
use super::{read_sink_ids, wait_for, Daemon, DaemonConfig};

/// The lease timeout the group runs with: short, so a test sees several takeovers in
/// seconds, and long enough for a loaded machine to renew in time (renewals come every
/// third of it).
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// One replica: its name, its directory, and its process while it runs.
pub struct Replica {
    /// `COMPARTMENT_AUDIT_REPLICA_NAME`.
    pub name: String,
    /// Its sink directory.
    pub dir: PathBuf,
    /// The process (absent once killed or terminated).
    pub daemon: Option<Daemon>,
    /// Paused with SIGSTOP (does not answer HTTP).
    pub stopped: bool,
}

/// Several replicas of one sink group.
pub struct Group {
    /// Database URL.
    pub url: String,
    /// Where the directories and logs live.
    pub root: PathBuf,
    /// Every replica ever started, in order (killed ones keep their directory).
    pub replicas: Vec<Replica>,
    /// Extra settings for every replica.
    pub env: Vec<(String, String)>,
    sampler: Option<Sampler>,
}

impl Group {
    /// An empty group on `url`, directories under `root`.
    pub fn new(url: &str, root: &Path) -> Group {
        Group {
            url: url.to_string(),
            root: root.to_path_buf(),
            replicas: Vec::new(),
            env: Vec::new(),
            sampler: None,
        }
    }

    /// The settings of replica `name` writing into `dir`.
    pub fn config(&self, name: &str, dir: &Path) -> DaemonConfig {
        let mut config = DaemonConfig::new(&self.url, dir, &self.root)
            .with("COMPARTMENT_AUDIT_REPLICA_NAME", name)
            .with(
                "COMPARTMENT_AUDIT_FILE_SINK_LEASE_TIMEOUT",
                &format!("{}ms", LEASE_TIMEOUT.as_millis()),
            )
            .with("COMPARTMENT_AUDIT_FILE_SINK_START_FROM", "beginning");
        for (k, v) in &self.env {
            config = config.with(k, v);
        }
        config
    }

    /// Starts a new replica with a directory of its own; returns its index.
    pub fn spawn(&mut self, name: &str) -> usize {
        let dir = self.root.join(format!("sink-{name}"));
        let daemon = self.config(name, &dir).spawn();
        self.replicas.push(Replica {
            name: name.to_string(),
            dir,
            daemon: Some(daemon),
            stopped: false,
        });
        if let Some(sampler) = &self.sampler {
            sampler.watch(
                self.replicas
                    .last()
                    .map(|r| r.dir.clone())
                    .unwrap_or_default(),
            );
        }
        self.replicas.len() - 1
    }

    /// Starts replica `i` again on its own directory (a pod restart with its volume).
    pub fn restart(&mut self, i: usize) {
        let config = self.config(&self.replicas[i].name, &self.replicas[i].dir);
        self.replicas[i].daemon = Some(config.spawn());
        self.replicas[i].stopped = false;
    }

    /// Indices of running, answering replicas that say they lead.
    pub fn leaders(&self) -> Vec<usize> {
        self.replicas
            .iter()
            .enumerate()
            .filter(|(_, r)| !r.stopped)
            .filter_map(|(i, r)| {
                let daemon = r.daemon.as_ref()?;
                (daemon.metric("compartment_audit_mirror_leader") == Some(1.0)).then_some(i)
            })
            .collect()
    }

    /// Waits until exactly one replica other than `not` leads; its index.
    pub async fn wait_for_leader(&self, not: Option<usize>, timeout: Duration) -> Option<usize> {
        wait_for(timeout, async || match self.leaders().as_slice() {
            [one] if Some(*one) != not => Some(*one),
            _ => None,
        })
        .await
    }

    /// SIGKILL of replica `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(daemon) = self.replicas[i].daemon.take() {
            if self.replicas[i].stopped {
                signal(&daemon, rustix::process::Signal::CONT);
            }
            daemon.kill();
        }
        self.replicas[i].stopped = false;
    }

    /// SIGTERM of replica `i`, without waiting for it to exit.
    pub fn terminate_async(&self, i: usize) {
        if let Some(daemon) = &self.replicas[i].daemon {
            signal(daemon, rustix::process::Signal::TERM);
        }
    }

    /// Waits for replica `i` to exit after SIGTERM; its exit status.
    pub fn reap(&mut self, i: usize) -> Option<std::process::ExitStatus> {
        self.replicas[i].daemon.take().map(|d| d.terminate())
    }

    /// SIGSTOP of replica `i`.
    pub fn pause(&mut self, i: usize) {
        if let Some(daemon) = &self.replicas[i].daemon {
            signal(daemon, rustix::process::Signal::STOP);
            self.replicas[i].stopped = true;
        }
    }

    /// SIGCONT of replica `i`.
    pub fn resume(&mut self, i: usize) {
        if let Some(daemon) = &self.replicas[i].daemon {
            signal(daemon, rustix::process::Signal::CONT);
            self.replicas[i].stopped = false;
        }
    }

    /// The log of replica `i` (every process it ran, as far as still on disk).
    pub fn log(&self, i: usize) -> String {
        self.replicas[i]
            .daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    /// Every replica's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                out.push_str(&format!(
                    "==> {} <==\n{}\n",
                    path.display(),
                    super::chaos::tail(&text, 40)
                ));
            }
        }
        out
    }

    /// Starts watching which directories grow (see [`Sampler`]).
    pub fn start_sampling(&mut self) {
        let sampler = Sampler::start();
        for r in &self.replicas {
            sampler.watch(r.dir.clone());
        }
        self.sampler = Some(sampler);
    }

    /// Stops watching; the number of samples in which two directories grew at once.
    pub fn stop_sampling(&mut self) -> usize {
        self.sampler.take().map_or(0, Sampler::stop)
    }

    /// Waits until the union of the directories holds every id in `committed`.
    pub async fn wait_for_union(&self, committed: &[i64], timeout: Duration) -> bool {
        let want: HashSet<i64> = committed.iter().copied().collect();
        wait_for(timeout, async || {
            let have: HashSet<i64> = self.dirs().iter().flat_map(|d| read_sink_ids(d)).collect();
            want.is_subset(&have).then_some(())
        })
        .await
        .is_some()
    }

    /// Every replica's directory.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.replicas.iter().map(|r| r.dir.clone()).collect()
    }
}

fn signal(daemon: &Daemon, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(daemon.pid() as i32) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// What the directories of a group hold together.
#[derive(Debug, Default)]
pub struct Union {
    /// Committed events in no directory.
    pub missing: Vec<i64>,
    /// Events in more than one directory.
    pub duplicated_across: usize,
    /// Events twice in one directory (never allowed).
    pub duplicated_within: Vec<i64>,
    /// Lines of events that were never committed (never allowed).
    pub unexpected: Vec<i64>,
    /// The longest run of consecutive lines of one directory that are also in
    /// another: the re-writes of one handover.
    pub max_handover_duplicates: usize,
}

impl Union {
    /// Compares `committed` with what `dirs` hold.
    pub fn of(committed: &[i64], dirs: &[PathBuf]) -> Union {
        let per_dir: Vec<Vec<i64>> = dirs.iter().map(|d| read_sink_ids(d)).collect();
        let mut owners: HashMap<i64, usize> = HashMap::new();
        let mut within = Vec::new();
        for ids in &per_dir {
            let mut seen = HashSet::new();
            for id in ids {
                if !seen.insert(*id) {
                    within.push(*id);
                }
            }
            for id in seen {
                *owners.entry(id).or_default() += 1;
            }
        }
        let committed_set: HashSet<i64> = committed.iter().copied().collect();
        let mut missing: Vec<i64> = committed
            .iter()
            .copied()
            .filter(|id| !owners.contains_key(id))
            .collect();
        missing.sort();
        let mut unexpected: Vec<i64> = owners
            .keys()
            .copied()
            .filter(|id| !committed_set.contains(id))
            .collect();
        unexpected.sort();
        let duplicated_across = owners.values().filter(|n| **n > 1).count();
        let mut max_run = 0;
        for ids in &per_dir {
            let mut run = 0;
            for id in ids {
                if owners.get(id).is_some_and(|n| *n > 1) {
                    run += 1;
                    max_run = max_run.max(run);
                } else {
                    run = 0;
                }
            }
        }
        Union {
            missing,
            duplicated_across,
            duplicated_within: within,
            unexpected,
            max_handover_duplicates: max_run,
        }
    }

    /// One line for the test output.
    pub fn summary(&self, committed: usize, takeovers: usize) -> String {
        format!(
            "replicas: committed {committed} / missing {} / duplicated-across-replicas {} / \
             max-handover-duplicates {} / takeovers {takeovers}",
            self.missing.len(),
            self.duplicated_across,
            self.max_handover_duplicates
        )
    }
}

/// Samples the size of every watched directory's files every few milliseconds and
/// counts the samples in which more than one grew: with one appender at a time that
/// happens at most at a handover, within one sampling interval.
pub struct Sampler {
    dirs: Arc<Mutex<Vec<PathBuf>>>,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Sampler {
    fn start() -> Sampler {
        let dirs: Arc<Mutex<Vec<PathBuf>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let dirs = dirs.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut last: HashMap<PathBuf, u64> = HashMap::new();
                let mut overlaps = 0;
                while !stop.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let watched = dirs.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    let mut grew = 0;
                    for dir in watched {
                        let size = dir_bytes(&dir);
                        let before = last.insert(dir, size).unwrap_or(size);
                        if size > before {
                            grew += 1;
                        }
                    }
                    if grew > 1 {
                        overlaps += 1;
                    }
                    std::thread::sleep(Duration::from_millis(5).saturating_sub(started.elapsed()));
                }
                overlaps
            })
        };
        Sampler { dirs, stop, thread }
    }

    fn watch(&self, dir: PathBuf) {
        self.dirs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(dir);
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or(usize::MAX)
    }
}

/// Bytes of the plain sink files in `dir` (the active and rotated uncompressed ones;
/// with the default rotation size nothing rotates in a test).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with("audit") && name.ends_with(".ndjson")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Waits for the writers' events to reach the group and checks the union.
pub async fn stop_and_check(
    group: &mut Group,
    writers: Writers,
    takeovers: usize,
    seconds: f64,
) -> Union {
    let stats = writers.stop().await;
    assert!(stats.commits.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let committed = super::writers::committed_ids(&group.url).await;
    assert!(
        group
            .wait_for_union(&committed, Duration::from_secs(60))
            .await,
        "the replicas' directories never held every committed event\n{}",
        group.logs()
    );
    let overlaps = group.stop_sampling();
    let union = Union::of(&committed, &group.dirs());
    println!("{}", union.summary(committed.len(), takeovers));
    println!("replicas: samples with two directories growing at once: {overlaps}");
    assert!(union.missing.is_empty(), "missing {:?}", union.missing);
    assert!(
        union.unexpected.is_empty(),
        "never committed: {:?}",
        union.unexpected
    );
    assert!(
        union.duplicated_within.is_empty(),
        "one directory holds an event twice: {:?}",
        union.duplicated_within
    );
    // One appender at a time: at a handover the old leader's last write and the new
    // one's first may fall into one 5 ms sample, never more often than that.
    assert!(
        overlaps <= takeovers,
        "two directories grew at once in {overlaps} samples ({takeovers} takeovers)\n{}",
        group.logs()
    );
    // Re-writes are what the old leader appended after its last publication: at most
    // a publication interval (1 s) of events plus the batch in hand.
    let rate = committed.len() as f64 / seconds.max(1.0);
    let bound = (rate * 2.0) as usize + 200;
    assert!(
        union.max_handover_duplicates <= bound,
        "{} events written twice at one handover (bound {bound})",
        union.max_handover_duplicates
    );
    union
}
