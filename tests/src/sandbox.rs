//! Node sandboxes: one fresh network namespace per simulated node (processes started
//! in it also get a private mount namespace, via `ip netns exec`), and a test LAN — a
//! bridge living in its own namespace — that nodes join through veth pairs.
//!
//! Every link is created directly inside the test namespaces (`ip -n`), so nothing in
//! the root network namespace changes: no link, address, route or iptables rule.
//! Namespaces are deleted on drop (their veths go with them), also when a test
//! panics; leftovers of test processes that died are swept on the next start.

use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::command::run;
use crate::naming;
use crate::process::Process;

const NETNS_DIR: &str = "/run/netns";

/// Where `ip netns exec` finds per-namespace files to show over /etc.
const ETC_NETNS_DIR: &str = "/etc/netns";

/// A network namespace made for a test, deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(label: &str) -> Result<Netns> {
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_stale);
        let name = naming::unique(label);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <ns> args…`.
    fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove_etc_dir(&self.name);
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!(
                "warning: cannot delete network namespace {}: {e:#}",
                self.name
            );
        }
    }
}

/// Deletes network namespaces (and their /etc/netns files) that the harness named for
/// test processes that no longer exist, e.g. killed before their drops ran. Runs
/// once per test process on the first [`Node::new`] / [`Lan::new`]. Processes still
/// inside such a namespace are not touched: this run did not start them.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if naming::is_stale(&name) {
            let _ = run(Command::new("ip").args(["netns", "del", &name]));
        }
    }
    if let Ok(entries) = std::fs::read_dir(ETC_NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if naming::is_stale(&name) {
                remove_etc_dir(&name);
            }
        }
    }
}

/// Removes /etc/netns/<name>, and /etc/netns itself once empty.
fn remove_etc_dir(name: &str) {
    let dir = Path::new(ETC_NETNS_DIR).join(name);
    if dir.exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_dir(ETC_NETNS_DIR);
    }
}

/// Runs `f` on a fresh thread that has joined the network namespace at `path`, and
/// returns its result: sockets it opens live in that namespace. The calling thread
/// and the rest of the test process are not moved.
pub fn in_netns_path<R: Send>(path: &Path, f: impl FnOnce() -> R + Send) -> Result<R> {
    let file = File::open(path)
        .with_context(|| format!("cannot open network namespace {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot enter network namespace {}", path.display()))?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// `cmd` rewritten as `ip netns exec <netns> <program> <args>`, keeping its
/// environment changes and working directory.
pub fn wrap_in_netns(netns: &str, cmd: &Command) -> Command {
    crate::command::prefixed("ip", &["netns", "exec", netns], cmd)
}

/// `cmd` rewritten to run in a fresh private mount namespace (`unshare --mount
/// --propagation private`, which execs in place: the PID stays the program's), still
/// in the test's network namespace. Its mounts vanish with it and never reach the
/// host. Start it with [`Process::spawn`] or run it with [`crate::command::run`].
pub fn with_private_mounts(cmd: &Command) -> Command {
    crate::command::prefixed(
        "unshare",
        &["--mount", "--propagation", "private", "--"],
        cmd,
    )
}

/// A description of the test process's own (root) network namespace — links,
/// addresses, routes of all tables, and iptables/ip6tables rules — without counters,
/// lifetimes or timestamps. Take one before and after a test and compare them to
/// prove that nothing in the root namespace changed.
pub fn root_netns_snapshot() -> String {
    let mut out = String::new();
    let mut section = |title: &str, program: &str, args: &[&str], keep: fn(&str) -> String| {
        out.push_str(&format!("## {title}\n"));
        match crate::command::run_stdout(Command::new(program).args(args)) {
            Ok(text) => {
                for line in text.lines().filter(|l| !l.starts_with('#')) {
                    out.push_str(&keep(line));
                    out.push('\n');
                }
            }
            Err(e) => out.push_str(&format!("unavailable: {e:#}\n")),
        }
    };
    // Interface index and name, flags and addresses; not state or queue lengths.
    let link = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let mac = f
            .iter()
            .position(|w| w.starts_with("link/"))
            .map(|i| f[i..].iter().take(2));
        let mut kept: Vec<&str> = f.iter().take(3).copied().collect();
        kept.extend(mac.into_iter().flatten().copied());
        kept.join(" ")
    };
    let addr = |l: &str| l.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
    let route = |l: &str| {
        let mut kept = Vec::new();
        let mut words = l.split_whitespace();
        while let Some(w) = words.next() {
            if w == "expires" {
                words.next();
            } else {
                kept.push(w);
            }
        }
        kept.join(" ")
    };
    let rule = |l: &str| match l.split_once(" [") {
        // ":INPUT ACCEPT [12:345]": drop the packet counters.
        Some((head, _)) if l.starts_with(':') => head.to_string(),
        _ => l.to_string(),
    };
    section("links", "ip", &["-o", "link", "show"], link);
    section("addresses", "ip", &["-o", "addr", "show"], addr);
    section(
        "ipv4 routes",
        "ip",
        &["-4", "route", "show", "table", "all"],
        route,
    );
    section(
        "ipv6 routes",
        "ip",
        &["-6", "route", "show", "table", "all"],
        route,
    );
    section("iptables", "iptables-save", &[], rule);
    section("ip6tables", "ip6tables-save", &[], rule);
    out
}

/// A simulated node: its own network namespace with loopback up; processes started
/// in it also get their own mount namespace and a UTS namespace with the node's
/// hostname.
pub struct Node {
    ns: Netns,
    hostname: String,
    next_if: AtomicU32,
}

impl Node {
    /// Creates the node's network namespace (named `flotilla-test-<pid>-<n>-<name>`).
    /// Panics when it cannot (e.g. without root or iproute2).
    pub fn new(name: &str) -> Node {
        let ns = Netns::create(name)
            .unwrap_or_else(|e| panic!("cannot create sandbox node {name:?}: {e:#}"));
        Node {
            ns,
            hostname: hostname_for(name),
            next_if: AtomicU32::new(0),
        }
    }

    /// The hostname processes in this node see: `name` as given to [`Node::new`]
    /// (characters a hostname cannot hold replaced by `-`, at most 63).
    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The namespace name (as in `ip netns list`).
    pub fn netns(&self) -> &str {
        &self.ns.name
    }

    /// The namespace's bind mount, `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        self.ns.path()
    }

    /// `cmd` rewritten to run inside the node: `ip netns exec <ns> <program> <args>`
    /// (same environment and working directory). `ip netns exec` execs the program
    /// in place, so the PID stays the program's, in a private mount namespace.
    pub fn wrap(&self, cmd: &Command) -> Command {
        let mut wrapped = wrap_in_netns(&self.ns.name, cmd);
        let hostname = self.hostname.clone();
        // SAFETY: runs in the forked child before exec and only makes two syscalls
        // (no allocation, no locks), as pre_exec requires.
        unsafe {
            wrapped.pre_exec(move || {
                nix::sched::unshare(CloneFlags::CLONE_NEWUTS)?;
                nix::unistd::sethostname(&hostname)?;
                Ok(())
            });
        }
        wrapped
    }

    /// `cmd` rewritten to run in the node's network namespace and a private mount
    /// namespace of its own, but with the host's /sys: what a node agent needs
    /// (`ip netns exec`, as [`Node::wrap`] uses, remounts /sys and hides the cgroup
    /// file systems). nsenter and unshare exec in place: the PID is the program's.
    pub fn wrap_keeping_sys(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("nsenter");
        wrapped
            .arg(format!("--net={}", self.netns_path().display()))
            .args(["--", "unshare", "--mount", "--propagation", "private", "--"])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        wrapped
    }

    /// Runs `ip -n <ns> args…` (configuration inside the node); returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.ns.ip(args)?.stdout).into_owned())
    }

    /// Makes processes started in this node see `contents` as `/etc/<file>` (e.g.
    /// `resolv.conf` pointing at a test's DNS stub), through `ip netns exec`'s
    /// `/etc/netns/<ns>/` overlay; the target must exist in /etc. Removed on drop.
    pub fn set_etc_file(&self, file: &str, contents: &str) -> Result<()> {
        if file.is_empty() || file.contains('/') || file.starts_with('.') {
            bail!("invalid /etc file name {file:?}");
        }
        if !Path::new("/etc").join(file).exists() {
            bail!("/etc/{file} does not exist, so it cannot be replaced inside the node");
        }
        let dir = Path::new(ETC_NETNS_DIR).join(&self.ns.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::write(dir.join(file), contents)
            .with_context(|| format!("cannot write {}", dir.join(file).display()))
    }

    /// Starts `cmd` inside the node as a [`Process`] (logs captured, stopped on drop).
    pub fn spawn(&self, cmd: Command) -> Process {
        let name = Path::new(cmd.get_program())
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Process::try_spawn(self.wrap(&cmd), Some(&self.netns_path()))
            .unwrap_or_else(|e| panic!("cannot start {name} in node {}: {e:#}", self.ns.name))
            .named(&name)
    }

    /// Runs `cmd` inside the node to completion; fails (quoting stderr) unless it
    /// exits successfully.
    pub fn run(&self, cmd: &Command) -> Result<Output> {
        run(&mut self.wrap(cmd))
    }

    /// Runs `f` on a thread inside the node's network namespace (e.g. a client
    /// connecting to a server in the node) and returns its result.
    pub fn in_netns<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        in_netns_path(&self.netns_path(), f).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Opens a TCP connection to `addr` from inside the node.
    pub fn connect(&self, addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
        self.in_netns(|| TcpStream::connect_timeout(&addr, timeout))
    }

    /// Joins `lan` with a veth pair: the node end (returned, `eth0`, `eth1`, …) gets
    /// `cidr` (e.g. `10.99.0.2/24`) and is up; the LAN end is a port of its bridge.
    pub fn attach(&self, lan: &Lan, cidr: &str) -> Result<String> {
        if !cidr.contains('/') {
            bail!("address {cidr:?} needs a prefix length, e.g. 10.99.0.2/24");
        }
        let ifname = format!("eth{}", self.next_if.fetch_add(1, Ordering::Relaxed));
        let port = format!("port{}", lan.next_port.fetch_add(1, Ordering::Relaxed));
        // Created inside the node's namespace, its peer directly inside the LAN's.
        self.ns.ip(&[
            "link",
            "add",
            &ifname,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            &lan.ns.name,
        ])?;
        let result = (|| {
            lan.ns.ip(&["link", "set", &port, "master", BRIDGE, "up"])?;
            self.ns.ip(&["addr", "add", cidr, "dev", &ifname])?;
            self.ns.ip(&["link", "set", &ifname, "up"])
        })();
        if let Err(e) = result {
            // Leave nothing half-done: deleting one end removes the pair.
            let _ = self.ns.ip(&["link", "del", &ifname]);
            return Err(e.context(format!("cannot attach {} to the LAN", self.ns.name)));
        }
        Ok(ifname)
    }
}

/// A valid hostname from a node name.
fn hostname_for(name: &str) -> String {
    let host: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if host.is_empty() {
        "node".to_string()
    } else {
        host
    }
}

/// The bridge's name inside the LAN namespace.
pub const BRIDGE: &str = "br0";

/// A test LAN: a bridge in its own network namespace; nodes join with
/// [`Node::attach`]. Deleted (with all its ports) on drop.
pub struct Lan {
    ns: Netns,
    next_port: AtomicU32,
}

impl Lan {
    /// Creates the LAN namespace and its bridge. Panics when it cannot.
    pub fn new() -> Lan {
        let ns = Netns::create("lan").unwrap_or_else(|e| panic!("cannot create test LAN: {e:#}"));
        ns.ip(&["link", "add", BRIDGE, "type", "bridge"])
            .and_then(|_| ns.ip(&["link", "set", BRIDGE, "up"]))
            .unwrap_or_else(|e| panic!("cannot create the test LAN bridge: {e:#}"));
        Lan {
            ns,
            next_port: AtomicU32::new(0),
        }
    }

    /// The namespace name holding the bridge.
    pub fn netns(&self) -> &str {
        &self.ns.name
    }

    /// Runs `ip -n <ns> args…` inside the LAN namespace; returns its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.ns.ip(args)?.stdout).into_owned())
    }

    /// The names of the bridge's ports (one per attached node).
    pub fn ports(&self) -> Result<Vec<String>> {
        let out = self.ns.ip(&["-o", "link", "show", "master", BRIDGE])?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .collect())
    }
}

impl Default for Lan {
    fn default() -> Self {
        Lan::new()
    }
}
