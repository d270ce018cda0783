//! Client processes of a multi-process run. One process may hold about 19,000 sockets (the
//! open-files limit is 20,000) and one source address has about 28,000 ephemeral ports, so large
//! runs start several `belay-load worker` children, each on its own 127.0.0.x, and talk to them
//! over their stdin and stdout.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;

use crate::adapter::ServerSpec;
use crate::common::ErrorCount;
use crate::procfs;
use crate::worker::{ClimbSpec, ResumeSpec, Stats, WorkerMsg, WorkerReport, WorkerSpec};

/// Most sessions one worker may hold: the 20,000 open-files limit, less room for the HTTP pool,
/// stdio and the runtime.
pub const MAX_PER_WORKER: u32 = 18_500;
/// How long a worker may take to answer a command.
const ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// The source address of worker `index`: 127.0.0.2, 127.0.0.3, ... (127.0.0.1 is left to the
/// parent's own requests).
pub fn source_address(index: usize) -> Result<IpAddr> {
    let last = u8::try_from(index + 2)
        .ok()
        .filter(|&b| b < 255)
        .context("too many workers for 127.0.0.x")?;
    Ok(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
}

/// What every client process of a run shares; [`specs`] gives each its own index, source
/// address and share of the sessions.
pub struct Shared {
    pub server: ServerSpec,
    pub run: String,
    pub open_concurrency: u32,
    pub open_timeout_s: u64,
    pub seqs: u64,
    pub climb: Option<ClimbSpec>,
    pub resume: Option<ResumeSpec>,
}

/// One spec per client process: `shared` with its own index, source address and share of
/// `sessions` (at most `per_worker` each).
pub fn specs(shared: &Shared, sessions: u32, per_worker: u32) -> Result<Vec<WorkerSpec>> {
    shares(sessions, per_worker)
        .into_iter()
        .enumerate()
        .map(|(index, (first_user, count))| {
            Ok(WorkerSpec {
                index,
                server: shared.server.clone(),
                source: source_address(index)?,
                run: shared.run.clone(),
                first_user,
                sessions: count,
                open_concurrency: shared.open_concurrency,
                open_timeout_s: shared.open_timeout_s,
                seqs: shared.seqs,
                climb: shared.climb.clone(),
                resume: shared.resume.clone(),
            })
        })
        .collect()
}

/// The server processes to read CPU and memory from: those given, or else the ones listening
/// on `port`.
pub fn server_pids(given: &[u32], port: u16) -> Result<Vec<u32>> {
    if given.is_empty() {
        procfs::listeners(port)
    } else {
        Ok(given.to_vec())
    }
}

/// The workers' error lists merged, most frequent first.
pub fn errors(reports: &[WorkerReport]) -> Vec<ErrorCount> {
    let mut counts = std::collections::BTreeMap::<&str, u64>::new();
    for e in reports.iter().flat_map(|r| r.errors.iter()) {
        *counts.entry(&e.message).or_default() += e.count;
    }
    let mut list: Vec<ErrorCount> = counts
        .into_iter()
        .map(|(message, count)| ErrorCount {
            count,
            message: message.to_owned(),
        })
        .collect();
    list.sort_by_key(|e| std::cmp::Reverse(e.count));
    list
}

/// Splits `sessions` into shares of at most `per_worker`: (first user index, count).
pub fn shares(sessions: u32, per_worker: u32) -> Vec<(u64, u32)> {
    let per_worker = per_worker.clamp(1, MAX_PER_WORKER);
    let workers = sessions.div_ceil(per_worker).max(1);
    // Even shares, so the workers finish opening together.
    let base = sessions / workers;
    let extra = sessions % workers;
    let mut first = 0u64;
    (0..workers)
        .map(|i| {
            let count = base + u32::from(i < extra);
            let share = (first, count);
            first += u64::from(count);
            share
        })
        .collect()
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    pid: u32,
}

pub struct Fleet {
    workers: Vec<Worker>,
    lines: mpsc::UnboundedReceiver<(usize, Result<WorkerMsg>)>,
}

impl Fleet {
    /// Starts one child per spec.
    pub fn spawn(specs: &[WorkerSpec]) -> Result<Self> {
        let exe = std::env::current_exe().context("locating belay-load")?;
        let (tx, lines) = mpsc::unbounded_channel();
        let mut workers = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let mut child = Command::new(&exe)
                .arg("worker")
                .arg("--spec")
                .arg(serde_json::to_string(spec).context("encoding a worker spec")?)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a worker process")?;
            let stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let pid = child.id().context("worker pid")?;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                loop {
                    let msg = match lines.next_line().await {
                        Ok(Some(line)) => serde_json::from_str::<WorkerMsg>(&line)
                            .with_context(|| format!("worker {index} said {line:?}")),
                        Ok(None) => Err(anyhow::anyhow!("worker {index} exited")),
                        Err(err) => Err(anyhow::Error::new(err).context("reading a worker")),
                    };
                    let last = msg.is_err();
                    if tx.send((index, msg)).is_err() || last {
                        break;
                    }
                }
            });
            workers.push(Worker { child, stdin, pid });
        }
        Ok(Self { workers, lines })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|w| w.pid).collect()
    }

    /// CPU seconds of every worker so far.
    pub fn cpu_seconds(&self) -> f64 {
        procfs::cpu_seconds_sum(&self.pids())
    }

    /// Waits until every worker has opened (or failed to open) its sessions, showing progress.
    pub async fn wait_open(&mut self, bar: &ProgressBar) -> Result<Stats> {
        let mut latest = vec![Stats::default(); self.workers.len()];
        let mut ready = vec![false; self.workers.len()];
        while !ready.iter().all(|r| *r) {
            let (index, msg) = self.lines.recv().await.context("workers went away")?;
            match msg? {
                WorkerMsg::Progress(stats) => latest[index] = stats,
                WorkerMsg::Ready(stats) => {
                    latest[index] = stats;
                    ready[index] = true;
                }
                other => bail!("worker {index}: unexpected {other:?}"),
            }
            let total = sum(&latest);
            bar.set_position(total.opened + total.failed);
            bar.set_message(format!("open {}  failed {}", total.opened, total.failed));
        }
        Ok(sum(&latest))
    }

    /// Sends `command` to every worker and returns their answers in worker order.
    async fn ask(&mut self, command: &str) -> Result<Vec<WorkerMsg>> {
        for worker in &mut self.workers {
            worker
                .stdin
                .write_all(format!("{command}\n").as_bytes())
                .await
                .context("writing to a worker")?;
        }
        let mut answers: Vec<Option<WorkerMsg>> = (0..self.workers.len()).map(|_| None).collect();
        while answers.iter().any(Option::is_none) {
            let (index, msg) = tokio::time::timeout(ANSWER_WITHIN, self.lines.recv())
                .await
                .with_context(|| format!("no answer to {command:?} within {ANSWER_WITHIN:?}"))?
                .context("workers went away")?;
            // Progress lines sent before the command was read are stale: skip them.
            match msg? {
                WorkerMsg::Progress(_) | WorkerMsg::Ready(_) => {}
                answer => answers[index] = Some(answer),
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Current counts, summed over workers.
    pub async fn stats(&mut self) -> Result<Stats> {
        self.counts("stats").await
    }

    /// Tells climbers to start (matchmaking).
    pub async fn go(&mut self) -> Result<Stats> {
        self.counts("go").await
    }

    /// Tells every session to close its stream (reconnect).
    pub async fn away(&mut self) -> Result<Stats> {
        self.counts("away").await
    }

    /// Tells every session to reopen its stream with its last cursor (reconnect).
    pub async fn back(&mut self) -> Result<Stats> {
        self.counts("back").await
    }

    async fn counts(&mut self, command: &str) -> Result<Stats> {
        let mut total = Stats::default();
        for answer in self.ask(command).await? {
            match answer {
                WorkerMsg::Stats(stats) => total.add(&stats),
                other => bail!("unexpected answer to {command:?}: {other:?}"),
            }
        }
        Ok(total)
    }

    pub async fn reports(&mut self) -> Result<Vec<WorkerReport>> {
        self.ask("report")
            .await?
            .into_iter()
            .map(|answer| match answer {
                WorkerMsg::Report(report) => Ok(*report),
                other => bail!("unexpected answer to \"report\": {other:?}"),
            })
            .collect()
    }

    /// Tells every worker to close its sessions and exit; kills those that do not.
    pub async fn stop(mut self) {
        for worker in &mut self.workers {
            let _ = worker.stdin.write_all(b"stop\n").await;
        }
        for worker in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(10), worker.child.wait())
                .await
                .is_err()
            {
                let _ = worker.child.kill().await;
            }
        }
    }
}

fn sum(all: &[Stats]) -> Stats {
    let mut total = Stats::default();
    for stats in all {
        total.add(stats);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_even_and_cover_every_session() {
        assert_eq!(
            shares(18_000, 5_000),
            vec![(0, 4_500), (4_500, 4_500), (9_000, 4_500), (13_500, 4_500)]
        );
        assert_eq!(shares(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
        assert_eq!(shares(10, 100), vec![(0, 10)]);
        let total: u32 = shares(40_001, 19_000).iter().map(|s| s.1).sum();
        assert_eq!(total, 40_001);
    }

    #[test]
    fn workers_use_127_0_0_2_upwards() -> Result<()> {
        assert_eq!(source_address(0)?, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)));
        assert!(source_address(253).is_err());
        Ok(())
    }
}
