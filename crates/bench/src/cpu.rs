//! CPU time spent by this process and by a server's process tree, read from `/proc`, so a
//! benchmark can say how much work each side did and what two cores allow at best.
//!
//! A process's CPU is `utime + stime` of its `/proc/<pid>/stat` (every thread). A server's tree
//! is its root process — with `cutime + cstime`, the CPU of children it has already reaped — plus
//! every live descendant's own `utime + stime`; a child that exits between two samples moves from
//! the second sum into the first, so a difference of samples counts it once.
//!
//! Invariants: reading never fails a benchmark — a process that vanished, or a system without
//! `/proc`, contributes zero and the figure is a lower bound; times are in seconds of CPU, to the
//! kernel's 10 ms tick.

use std::collections::HashMap;
use std::fs;

/// Linux reports `/proc/<pid>/stat` times in `USER_HZ` ticks, which is 100 on every
/// architecture Linux exposes to user space (the ABI fixes it, whatever the kernel's `HZ`).
const TICKS_PER_SEC: f64 = 100.0;

/// Fields after the command name of `/proc/<pid>/stat`: the parent pid, and the four CPU times in
/// ticks (own user and system, reaped children's user and system).
struct Stat {
    ppid: u32,
    own_ticks: u64,
    reaped_ticks: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name is in parentheses and may hold spaces or parentheses: count after the last `)`.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    // After the name: state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14).
    Some(Stat {
        ppid: u32::try_from(num(1)?).ok()?,
        own_ticks: num(11)? + num(12)?,
        reaped_ticks: num(13)? + num(14)?,
    })
}

/// CPU seconds of this process so far (all threads).
pub fn own_cpu_s() -> f64 {
    stat(std::process::id()).map_or(0.0, |s| s.own_ticks as f64 / TICKS_PER_SEC)
}

/// CPU seconds of the process tree rooted at `root` so far: the root, the children it reaped and
/// every live descendant.
pub fn tree_cpu_s(root: u32) -> f64 {
    // A child reaped while the descendants are listed would be in neither sum (or in both): its
    // whole life's CPU would then land in the next difference. Such a read is taken again.
    let mut attempt = 0;
    loop {
        let Some(before) = stat(root) else { return 0.0 };
        let ticks = tree_ticks(root, &before);
        attempt += 1;
        match stat(root) {
            Some(after) if after.reaped_ticks != before.reaped_ticks && attempt < 5 => continue,
            _ => return ticks as f64 / TICKS_PER_SEC,
        }
    }
}

/// The CPU ticks of `root` (whose stat is `root_stat`), its reaped children and its live
/// descendants.
fn tree_ticks(root: u32, root_stat: &Stat) -> u64 {
    let mut children: HashMap<u32, Vec<(u32, u64)>> = HashMap::new();
    if let Ok(entries) = fs::read_dir("/proc") {
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if let Some(s) = stat(pid) {
                children.entry(s.ppid).or_default().push((pid, s.own_ticks));
            }
        }
    }
    let mut ticks = root_stat.own_ticks + root_stat.reaped_ticks;
    let mut stack = vec![root];
    while let Some(parent) = stack.pop() {
        for &(pid, own) in children.get(&parent).map(Vec::as_slice).unwrap_or_default() {
            ticks += own;
            stack.push(pid);
        }
    }
    ticks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_grows_with_work() {
        // Spin until the process has used 100 ms of CPU or 10 s have passed: on a loaded
        // machine 200 ms of wall time can be far less CPU, which made a fixed spin flaky.
        let before = own_cpu_s();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while own_cpu_s() - before < 0.1 && t.elapsed() < std::time::Duration::from_secs(10) {
            for _ in 0..100_000 {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            }
        }
        std::hint::black_box(x);
        assert!(own_cpu_s() - before >= 0.1, "10 s of spinning counted less than 100 ms of CPU");
    }

    #[test]
    fn a_tree_counts_its_reaped_children() {
        let root = std::process::id();
        let before = tree_cpu_s(root);
        let status = std::process::Command::new("sh")
            .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"])
            .status()
            .unwrap_or_else(|e| panic!("run sh: {e}"));
        assert!(status.success());
        let child_cpu = tree_cpu_s(root) - before;
        assert!(child_cpu >= 0.05, "the reaped child's CPU is counted: {child_cpu}");
        assert_eq!(tree_cpu_s(u32::MAX), 0.0, "a missing process counts zero");
    }
}
