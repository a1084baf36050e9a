//! What an earlier run of this agent left running: finding the process
//! groups of an interrupted attempt and stopping them before the attempt is
//! reported failed, so that a rerun can never overlap a leftover.
//!
//! Two ways to find them, because the agent can die between the spawn and
//! the write of the group to the run log: the recorded group (pgid, leader
//! start time, boot id), and the environment every command inherits
//! (`RELAYTREE_AGENT_STORE`, `RELAYTREE_CLIENT`, `RELAYTREE_JOB`,
//! `RELAYTREE_ATTEMPT`) read from `/proc/*/environ`. Never decides what the run log says (`runlog.rs`).

use super::exec::{self, Group, Stopped};
use crate::proto::{Attempt, JobId, NodeName};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;
use tracing::{info, warn};

/// A spawned process group as the run log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Spawned {
    /// The group and its leader's start time.
    pub group: Group,
    /// `/proc/sys/kernel/random/boot_id` at the spawn: after a reboot,
    /// nothing of it can be left.
    pub boot_id: Option<String>,
}

impl Spawned {
    /// `group`, spawned in this boot.
    pub fn now(group: Group) -> Spawned {
        Spawned {
            group,
            boot_id: boot_id(),
        }
    }
}

/// This boot's id.
pub(crate) fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// (store, client, job, attempt) as a command's environment names them.
type EnvKey = (String, String, String, String);

/// What the agents of one store (one `agent serve`, or a whole swarm)
/// share to find what earlier runs left: the store's id, and every process
/// group holding a process whose environment names an attempt, read from
/// `/proc` once, at the first need (one scan, not one per interrupted
/// attempt, since a swarm may have thousands).
#[derive(Clone)]
pub(crate) struct Leftovers {
    /// The store's id, as every command carries it (`RELAYTREE_AGENT_STORE`).
    pub store_id: String,
    /// When the agents started: what they find left of earlier runs
    /// existed then, so any view of `/proc` taken since says if it still does.
    created: tokio::time::Instant,
    scan: Arc<OnceCell<HashMap<EnvKey, BTreeSet<i32>>>>,
}

impl Leftovers {
    /// For the store with id `store_id`; nothing read yet.
    pub fn new(store_id: String) -> Leftovers {
        Leftovers {
            store_id,
            created: tokio::time::Instant::now(),
            scan: Default::default(),
        }
    }

    async fn get(&self) -> &HashMap<EnvKey, BTreeSet<i32>> {
        self.scan
            .get_or_init(|| async {
                tokio::task::spawn_blocking(scan_environs)
                    .await
                    .unwrap_or_default()
            })
            .await
    }
}

/// Reads every process's environment (those of other users are unreadable,
/// and skipped: they are not ours).
fn scan_environs() -> HashMap<EnvKey, BTreeSet<i32>> {
    let own = exec::proc_stat(std::process::id() as i32).map(|s| s.pgrp);
    let mut out: HashMap<EnvKey, BTreeSet<i32>> = HashMap::new();
    for pid in exec::all_pids() {
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let Some(key) = attempt_of(&env) else {
            continue;
        };
        let Some(stat) = exec::proc_stat(pid) else {
            continue;
        };
        if stat.state == 'Z' || Some(stat.pgrp) == own || stat.pgrp <= 1 {
            continue;
        }
        out.entry(key).or_default().insert(stat.pgrp);
    }
    out
}

/// The attempt a process environment (NUL-separated `K=V`) belongs to.
fn attempt_of(environ: &[u8]) -> Option<EnvKey> {
    let (mut s, mut c, mut j, mut a) = (None, None, None, None);
    for var in environ.split(|b| *b == 0) {
        let Ok(var) = std::str::from_utf8(var) else {
            continue;
        };
        if let Some(v) = var.strip_prefix("RELAYTREE_AGENT_STORE=") {
            s = Some(v.to_string());
        } else if let Some(v) = var.strip_prefix("RELAYTREE_CLIENT=") {
            c = Some(v.to_string());
        } else if let Some(v) = var.strip_prefix("RELAYTREE_JOB=") {
            j = Some(v.to_string());
        } else if let Some(v) = var.strip_prefix("RELAYTREE_ATTEMPT=") {
            a = Some(v.to_string());
        }
    }
    Some((s?, c?, j?, a?))
}

/// Whether a recorded group may still hold processes of ours, judged from
/// what `/proc` says now: same boot, and either its leader is alive with
/// the recorded start time, or the leader is gone and the group still has
/// members (a pgid is not reused while its group lives).
fn recorded_is_ours(
    rec: &Spawned,
    boot_now: Option<&str>,
    leader_now: Option<&exec::ProcStat>,
    members: usize,
) -> bool {
    if rec.boot_id.is_some() && boot_now.is_some() && rec.boot_id.as_deref() != boot_now {
        return false;
    }
    match leader_now {
        Some(l) if l.state != 'Z' => match rec.group.leader_start {
            Some(start) => l.start == start,
            None => true,
        },
        // A zombie leader with our start time, or none: its group's members.
        Some(l) if rec.group.leader_start.is_some_and(|s| s != l.start) => false,
        _ => members > 0,
    }
}

/// Stops whatever is left of attempt (`job`, `attempt`) of client `me` of
/// the store of `left`:
/// the recorded group if it is still ours, and any group whose processes
/// carry the attempt in their environment. SIGTERM, `grace`, SIGKILL; all
/// groups at once. Returns how many groups had something alive.
pub(crate) async fn stop(
    left: &Leftovers,
    me: &NodeName,
    job: JobId,
    attempt: Attempt,
    recorded: Option<&Spawned>,
    grace: Duration,
) -> usize {
    let mut groups: BTreeSet<i32> = left
        .get()
        .await
        .get(&(
            left.store_id.clone(),
            me.to_string(),
            job.to_string(),
            attempt.to_string(),
        ))
        .cloned()
        .unwrap_or_default();
    if let Some(rec) = recorded {
        let pgid = rec.group.pgid;
        let ours = recorded_is_ours(
            rec,
            boot_id().as_deref(),
            exec::proc_stat(pgid).as_ref(),
            usize::from(exec::group_alive_since(pgid, left.created).await),
        );
        if ours {
            groups.insert(pgid);
        }
    }
    let own = exec::proc_stat(std::process::id() as i32).map(|s| s.pgrp);
    groups.retain(|g| Some(*g) != own && *g > 1);
    let stops = groups
        .iter()
        .map(|g| exec::stop_group(*g, grace, left.created));
    let results = futures::future::join_all(stops).await;
    let mut found = 0;
    for (g, r) in groups.iter().zip(results) {
        match r {
            Stopped::NothingLeft => {}
            Stopped::Terminated => {
                found += 1;
                info!(%job, %attempt, pgid = g, "leftover of an interrupted attempt stopped (SIGTERM)");
            }
            Stopped::Killed => {
                found += 1;
                warn!(%job, %attempt, pgid = g, ?grace, "leftover of an interrupted attempt outlived the grace; killed");
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use exec::ProcStat;

    #[tokio::test]
    async fn stop_finds_a_group_by_its_environment_alone() {
        // No record (the agent died before writing it): the environment
        // every command inherits names the attempt.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"])
            .env("RELAYTREE_AGENT_STORE", "store-1")
            .env("RELAYTREE_CLIENT", "env-finder")
            .env("RELAYTREE_JOB", "4242")
            .env("RELAYTREE_ATTEMPT", "3");
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let pgid = child.id() as i32;
        let t0 = std::time::Instant::now();
        while exec::group_members(pgid).len() < 3 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let me = NodeName::new("env-finder").unwrap();
        // Another store's client of the same name, another attempt of the
        // same job: not this one.
        for (store, attempt) in [("store-2", 3), ("store-1", 2)] {
            let left = Leftovers::new(store.into());
            let n = stop(
                &left,
                &me,
                JobId(4242),
                Attempt(attempt),
                None,
                Duration::from_secs(5),
            )
            .await;
            assert_eq!(n, 0, "{store} attempt {attempt}");
        }
        assert_eq!(exec::group_members(pgid).len(), 3);
        let n = stop(
            &Leftovers::new("store-1".into()),
            &me,
            JobId(4242),
            Attempt(3),
            None,
            Duration::from_secs(5),
        )
        .await;
        let _ = child.wait();
        assert_eq!(n, 1);
        assert!(
            exec::group_members(pgid).is_empty(),
            "group {pgid} still alive"
        );
    }

    #[test]
    fn attempt_from_environ() {
        type Row<'a> = (&'a [u8], Option<(&'a str, &'a str, &'a str, &'a str)>);
        let table: &[Row] = &[
            (
                b"A=1\0RELAYTREE_AGENT_STORE=s1\0RELAYTREE_CLIENT=c1\0RELAYTREE_JOB=7\0RELAYTREE_ATTEMPT=2\0",
                Some(("s1", "c1", "7", "2")),
            ),
            (
                b"RELAYTREE_ATTEMPT=1\0RELAYTREE_JOB=9\0RELAYTREE_CLIENT=x\0RELAYTREE_AGENT_STORE=s",
                Some(("s", "x", "9", "1")),
            ),
            // Another installation's command, without its store id.
            (b"RELAYTREE_CLIENT=c1\0RELAYTREE_JOB=7\0RELAYTREE_ATTEMPT=2\0", None),
            (b"RELAYTREE_AGENT_STORE=s\0RELAYTREE_CLIENT=c1\0RELAYTREE_JOB=7\0", None),
            (b"", None),
            (
                b"RELAYTREE_AGENT_STORE=s\0XRELAYTREE_CLIENT=c\0RELAYTREE_JOB=1\0RELAYTREE_ATTEMPT=1",
                None,
            ),
        ];
        for (env, want) in table {
            let want = want
                .map(|(s, c, j, a)| (s.to_string(), c.to_string(), j.to_string(), a.to_string()));
            assert_eq!(attempt_of(env), want, "{:?}", String::from_utf8_lossy(env));
        }
    }

    #[test]
    fn recorded_group_is_ours_only_when_proc_agrees() {
        let rec = |start: Option<u64>, boot: Option<&str>| Spawned {
            group: Group {
                pgid: 100,
                leader_start: start,
            },
            boot_id: boot.map(String::from),
        };
        let p = |state: char, start: u64| ProcStat {
            state,
            pgrp: 100,
            start,
        };
        // A record with a leader start and a boot id, against (boot now,
        // leader now, live members, ours?, what).
        type Row<'a> = (Option<&'a str>, Option<ProcStat>, usize, bool, &'a str);
        let table: &[Row] = &[
            (
                Some("b"),
                Some(p('S', 5)),
                1,
                true,
                "leader alive, same start",
            ),
            (
                Some("b"),
                Some(p('S', 6)),
                1,
                false,
                "pid reused by a stranger",
            ),
            (Some("c"), Some(p('S', 5)), 1, false, "another boot"),
            (Some("b"), None, 2, true, "leader gone, group lives"),
            (Some("b"), None, 0, false, "nothing left"),
            (
                Some("b"),
                Some(p('Z', 5)),
                1,
                true,
                "zombie leader, members",
            ),
            (Some("b"), Some(p('Z', 5)), 0, false, "zombie leader alone"),
            (Some("b"), Some(p('Z', 9)), 3, false, "zombie stranger"),
        ];
        let r = rec(Some(5), Some("b"));
        for (boot, leader, members, want, what) in table {
            assert_eq!(
                recorded_is_ours(&r, *boot, leader.as_ref(), *members),
                *want,
                "{what}"
            );
        }
        assert!(
            recorded_is_ours(&rec(None, None), None, Some(&p('S', 1)), 1),
            "nothing to compare: trust the pgid"
        );
    }

    #[tokio::test]
    async fn stop_finds_a_group_by_its_record_and_ends_it() {
        // A group spawned as a run would spawn it, then "forgotten" (as by
        // an agent that died): stop() ends it through the record alone.
        let mut cmd = std::process::Command::new("sh");
        cmd.args(["-c", "sleep 30 & sleep 30"]);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().unwrap();
        let pgid = child.id() as i32;
        let rec = Spawned::now(Group {
            pgid,
            leader_start: exec::start_ticks(pgid),
        });
        // Wait for the background sleep to be in the group.
        let t0 = std::time::Instant::now();
        while exec::group_members(pgid).len() < 2 && t0.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let me = NodeName::new("nobody-by-env").unwrap();
        let n = stop(
            &Leftovers::new("any".into()),
            &me,
            JobId(1),
            Attempt(1),
            Some(&rec),
            Duration::from_secs(5),
        )
        .await;
        let _ = child.wait();
        assert_eq!(n, 1);
        assert!(
            exec::group_members(pgid).is_empty(),
            "group {pgid} still alive"
        );
    }
}
