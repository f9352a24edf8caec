//! End-to-end tests of the container runtime: real containers from the busybox fixture,
//! driven through the real `flotilla-agent runtime` CLI, with cgroups under a per-test
//! parent that is removed afterwards.

use flotilla_tests::cgroup::TestCgroup;
use flotilla_tests::{bin, fixtures, require_root};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A bundle (busybox rootfs + config.json), a state root and a cgroup parent.
struct Bundle {
    dir: tempfile::TempDir,
    cg: TestCgroup,
    id: String,
    config: Value,
}

const DEFAULT_CAPS: [&str; 3] = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"];

impl Bundle {
    /// A bundle whose process runs `args`, shaped like `runc spec` output.
    fn new(label: &str, args: &[&str]) -> Bundle {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-rt-")
            .tempdir()
            .unwrap();
        fixtures::busybox_rootfs(&dir.path().join("rootfs"));
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        let cg = TestCgroup::new(label);
        let id = format!("{label}-{}", std::process::id());
        let config = json!({
            "ociVersion": "1.0.2",
            "process": {
                "terminal": false,
                "user": {"uid": 0, "gid": 0},
                "args": args,
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "cwd": "/",
                "capabilities": {
                    "bounding": DEFAULT_CAPS, "effective": DEFAULT_CAPS,
                    "permitted": DEFAULT_CAPS, "ambient": DEFAULT_CAPS
                },
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                "noNewPrivileges": true
            },
            "root": {"path": "rootfs", "readonly": true},
            "hostname": "boat",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                 "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
                 "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
                {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                 "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
                {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                 "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/sys", "type": "sysfs", "source": "sysfs",
                 "options": ["nosuid", "noexec", "nodev", "ro"]},
                {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                 "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
                {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
            ],
            "linux": {
                "cgroupsPath": format!("{}/{id}", cg.path()),
                "resources": {"devices": [{"allow": false, "access": "rwm"}]},
                "namespaces": [
                    {"type": "pid"}, {"type": "network"}, {"type": "ipc"},
                    {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
                ],
                "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
            }
        });
        Bundle {
            dir,
            cg,
            id,
            config,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn root(&self) -> PathBuf {
        self.path().join("state")
    }

    fn write(&self) {
        std::fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&self.config).unwrap(),
        )
        .unwrap();
    }

    /// The runtime CLI with `--root` set.
    fn cli(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("flotilla-agent"));
        c.arg("runtime").arg("--root").arg(self.root()).args(args);
        c
    }

    /// Runs the CLI and collects its output through files, not pipes: a created
    /// container inherits the CLI's stdio and may outlive it.
    fn out(&self, args: &[&str]) -> Output {
        self.write();
        let logs = tempfile::tempdir().unwrap();
        let (o, e) = (logs.path().join("out"), logs.path().join("err"));
        let status = self
            .cli(args)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&o).unwrap())
            .stderr(std::fs::File::create(&e).unwrap())
            .status()
            .unwrap();
        let o = Output {
            status,
            stdout: std::fs::read(&o).unwrap(),
            stderr: std::fs::read(&e).unwrap(),
        };
        eprintln!(
            "$ runtime {args:?} -> {:?}\nstdout: {}\nstderr: {}",
            o.status.code(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        o
    }

    /// `run` in the foreground.
    fn run(&self) -> Output {
        let b = self.path().to_str().unwrap().to_string();
        let id = self.id.clone();
        self.out(&["run", "--bundle", &b, &id])
    }

    /// `create` then `start`, for containers that keep running.
    fn create_start(&self) {
        let b = self.path().to_str().unwrap().to_string();
        let id = self.id.clone();
        let o = self.out(&["create", "--bundle", &b, &id]);
        assert!(o.status.success(), "create failed");
        assert_eq!(self.status(), "created");
        let o = self.out(&["start", &id]);
        assert!(o.status.success(), "start failed");
    }

    fn state(&self) -> Value {
        let o = self.out(&["state", &self.id]);
        assert!(o.status.success(), "state failed");
        serde_json::from_slice(&o.stdout).expect("state prints JSON")
    }

    fn status(&self) -> String {
        self.state()["status"].as_str().unwrap().to_string()
    }

    fn wait_status(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = self.cli(&["state", &self.id]).output().unwrap();
            let st: Option<Value> = serde_json::from_slice(&o.stdout).ok();
            if st.is_some_and(|s| s["status"] == want) {
                return;
            }
            assert!(Instant::now() < deadline, "container never became {want}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn exec(&self, args: &[&str]) -> Output {
        let mut a = vec!["exec", &self.id];
        a.extend_from_slice(args);
        self.out(&a)
    }

    /// The container's cgroup directory in the v1 hierarchy of `controller` (or unified).
    fn cgroup_dir(&self, controller: &str) -> PathBuf {
        match self.cg.v1(controller) {
            Some(d) => d.join(&self.id),
            None => self
                .cg
                .unified()
                .expect("a cgroup hierarchy")
                .join(&self.id),
        }
    }

    /// Asserts nothing of the container is left: state, cgroups, mounts.
    fn assert_gone(&self) {
        assert!(
            !self.root().join(&self.id).exists(),
            "state directory left behind"
        );
        for d in self.cg.dirs() {
            assert!(
                !d.join(&self.id).exists(),
                "cgroup {} left behind",
                d.join(&self.id).display()
            );
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(
            !mounts.contains(self.path().to_str().unwrap()),
            "a mount of the bundle is visible on the host"
        );
    }
}

impl Drop for Bundle {
    fn drop(&mut self) {
        // Best effort: remove the container if a test failed half-way.
        let _ = self
            .cli(&["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_true_and_exit_codes_propagate() {
    require_root!();
    let b = Bundle::new("rt-true", &["/bin/true"]);
    let o = b.run();
    assert_eq!(o.status.code(), Some(0));
    b.assert_gone();

    let mut b = Bundle::new("rt-exit", &["sh", "-c", "echo out; echo err >&2; exit 3"]);
    b.config["process"]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!("GREETING=ahoy"));
    let o = b.run();
    assert_eq!(o.status.code(), Some(3), "exit code passes through");
    assert_eq!(stdout(&o), "out\n");
    assert!(stderr(&o).contains("err"));
    b.assert_gone();
}

#[test]
fn pid1_hostname_and_isolation_from_the_host() {
    require_root!();
    let b = Bundle::new(
        "rt-iso",
        &[
            "sh",
            "-c",
            "echo pid=$$; echo host=$(hostname); echo procs=$(ls -d /proc/[0-9]* | tr -d '/proc' | tr '\\n' ' '); \
             echo mounts=$(cut -d' ' -f2 /proc/self/mounts | tr '\\n' ' '); \
             echo links=$(ls /sys/class/net | tr '\\n' ' ')",
        ],
    );
    let o = b.run();
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.contains("pid=1\n"), "{out}");
    assert!(out.contains("host=boat\n"), "{out}");
    // Only the container's few processes, numbered from 1: no host process is visible.
    let procs: Vec<u32> = out
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert!(procs.contains(&1), "{procs:?}");
    assert!(
        procs.iter().all(|p| *p < 20),
        "host processes visible: {procs:?}"
    );
    let mounts = out.lines().find_map(|l| l.strip_prefix("mounts=")).unwrap();
    for m in mounts.split_whitespace() {
        assert!(
            ["/", "/proc", "/dev", "/sys", "/tmp"]
                .iter()
                .any(|p| m == *p || m.starts_with(&format!("{p}/"))),
            "unexpected mount {m} visible in the container"
        );
    }
    assert!(!mounts.contains("/work"), "host mounts visible: {mounts}");
    let links = out.lines().find_map(|l| l.strip_prefix("links=")).unwrap();
    assert_eq!(links.trim(), "lo", "new network namespace has only lo");
}

#[test]
fn proc_sys_and_root_are_read_only_and_masked_paths_hidden() {
    require_root!();
    let b = Bundle::new(
        "rt-ro",
        &[
            "sh",
            "-c",
            "echo x > /proc/sys/kernel/domainname && echo wrote-sysctl; \
             touch /newfile && echo wrote-root; \
             echo tmp > /tmp/ok && cat /tmp/ok; \
             echo keys=$(wc -c < /proc/keys)",
        ],
    );
    let o = b.run();
    let out = stdout(&o);
    assert!(!out.contains("wrote-sysctl"), "{out}");
    assert!(!out.contains("wrote-root"), "{out}");
    assert!(out.contains("tmp\n"), "tmpfs /tmp stays writable: {out}");
    assert!(out.contains("keys=0"), "/proc/keys is masked: {out}");
    assert!(
        stderr(&o).contains("Read-only file system"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn dropping_cap_sys_admin_prevents_mount() {
    require_root!();
    let script = "mount -t tmpfs none /tmp && echo mounted";
    let mut b = Bundle::new("rt-nocap", &["sh", "-c", script]);
    b.config["root"]["readonly"] = json!(false);
    let o = b.run();
    assert!(
        !stdout(&o).contains("mounted"),
        "mount worked without CAP_SYS_ADMIN"
    );
    assert_ne!(o.status.code(), Some(0));

    let mut b = Bundle::new("rt-cap", &["sh", "-c", script]);
    b.config["root"]["readonly"] = json!(false);
    let mut caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    caps.push("CAP_SYS_ADMIN");
    for set in ["bounding", "effective", "permitted"] {
        b.config["process"]["capabilities"][set] = json!(caps);
    }
    let o = b.run();
    assert!(
        stdout(&o).contains("mounted"),
        "mount failed with CAP_SYS_ADMIN"
    );
}

#[test]
fn seccomp_denies_unshare_with_the_given_errno() {
    require_root!();
    let mut caps: Vec<&str> = DEFAULT_CAPS.to_vec();
    caps.push("CAP_SYS_ADMIN");
    let make = |label: &str, seccomp: bool| {
        let mut b = Bundle::new(label, &["sh", "-c", "unshare -u true && echo unshared"]);
        for set in ["bounding", "effective", "permitted"] {
            b.config["process"]["capabilities"][set] = json!(caps);
        }
        if seccomp {
            b.config["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
                "syscalls": [{"names": ["unshare"], "action": "SCMP_ACT_ERRNO", "errnoRet": 95}]
            });
        }
        b
    };
    let o = make("rt-noscmp", false).run();
    assert!(
        stdout(&o).contains("unshared"),
        "control: unshare works without the filter"
    );
    let o = make("rt-scmp", true).run();
    assert!(!stdout(&o).contains("unshared"));
    let err = stderr(&o).to_lowercase();
    assert!(
        err.contains("not supported"),
        "errno 95 (EOPNOTSUPP) expected: {err}"
    );
}

#[test]
fn memory_limit_oom_kill_is_reported_as_such() {
    require_root!();
    let mut b = Bundle::new(
        "rt-oom",
        &["sh", "-c", "x=$(tr '\\0' a < /dev/zero); echo survived"],
    );
    b.config["linux"]["resources"]["memory"] = json!({"limit": 32 * 1024 * 1024});
    let o = b.run();
    assert_eq!(o.status.code(), Some(137), "killed by SIGKILL");
    assert!(stderr(&o).contains("OOM-killed"), "{}", stderr(&o));
    assert!(!stdout(&o).contains("survived"));
    b.assert_gone();
}

#[test]
fn pids_limit_stops_a_fork_loop() {
    require_root!();
    let mut b = Bundle::new(
        "rt-pids",
        &[
            "sh",
            "-c",
            "for i in $(seq 1 40); do sleep 2 & done; echo procs=$(ls -d /proc/[0-9]* | wc -l)",
        ],
    );
    b.config["linux"]["resources"]["pids"] = json!({"limit": 10});
    let o = b.run();
    let err = stderr(&o);
    assert!(err.contains("fork"), "fork must fail past the limit: {err}");
    if let Some(n) = stdout(&o).lines().find_map(|l| l.strip_prefix("procs=")) {
        assert!(n.trim().parse::<u32>().unwrap() <= 10);
    }
}

#[test]
fn cpu_quota_and_cpuset_are_visible_in_the_cgroup() {
    require_root!();
    let mut b = Bundle::new("rt-cpu", &["sleep", "30"]);
    b.config["linux"]["resources"]["cpu"] =
        json!({"quota": 50000, "period": 100000, "cpus": "0", "shares": 512});
    b.config["linux"]["resources"]["memory"] = json!({"limit": 64 * 1024 * 1024});
    b.create_start();
    // From inside: the container's own cgroup is mounted at /sys/fs/cgroup.
    let o = b.exec(&[
        "sh",
        "-c",
        "cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max; \
         cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/cpuset.cpus",
    ]);
    assert_eq!(stdout(&o), "50000\n0\n");
    // From the host, in the container's cgroup.
    if b.cg.v1("cpu").is_some() {
        let quota = std::fs::read_to_string(b.cgroup_dir("cpu").join("cpu.cfs_quota_us")).unwrap();
        assert_eq!(quota.trim(), "50000");
        let shares = std::fs::read_to_string(b.cgroup_dir("cpu").join("cpu.shares")).unwrap();
        assert_eq!(shares.trim(), "512");
    }
    // Usage for the agent to report: cpu time, memory in use and its limit.
    let o = b.exec(&[
        "sh",
        "-c",
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    ]);
    assert!(o.status.success());
    let o = b.out(&["events", "--stats", &b.id]);
    assert!(o.status.success());
    let ev: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ev["type"], "stats");
    assert!(
        ev["data"]["cpu_usage_ns"].as_u64().unwrap() > 1_000_000,
        "{ev}"
    );
    assert!(
        ev["data"]["memory_usage_bytes"].as_u64().unwrap() > 0,
        "{ev}"
    );
    assert_eq!(ev["data"]["memory_limit_bytes"], 64 * 1024 * 1024, "{ev}");
    assert!(ev["data"]["pids"].as_u64().unwrap() >= 1, "{ev}");
    let o = b.out(&["delete", "--force", &b.id]);
    assert!(o.status.success());
    b.assert_gone();
}

#[test]
fn signals_reach_the_container_and_are_reported() {
    require_root!();
    let b = Bundle::new("rt-sig", &["sleep", "60"]);
    b.write();
    let bundle = b.path().to_str().unwrap().to_string();
    let mut child: Child = b
        .cli(&["run", "--bundle", &bundle, &b.id])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    b.wait_status("running");
    let o = b.out(&["kill", &b.id, "KILL"]);
    assert!(o.status.success());
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(137), "128 + SIGKILL");
    b.assert_gone();

    // A trapped SIGTERM sent to `run` itself is forwarded to the container.
    let b = Bundle::new(
        "rt-term",
        &[
            "sh",
            "-c",
            "trap 'exit 42' TERM; while true; do sleep 0.1; done",
        ],
    );
    b.write();
    let bundle = b.path().to_str().unwrap().to_string();
    let mut child = b
        .cli(&["run", "--bundle", &bundle, &b.id])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    b.wait_status("running");
    std::thread::sleep(Duration::from_millis(200));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(42));
}

#[test]
fn lifecycle_create_start_state_kill_delete_leaves_nothing() {
    require_root!();
    let b = Bundle::new("rt-life", &["sleep", "60"]);
    b.create_start();
    let st = b.state();
    assert_eq!(st["status"], "running");
    assert_eq!(st["id"], b.id.as_str());
    assert!(st["pid"].as_i64().unwrap() > 1);
    assert_eq!(st["bundle"], b.path().to_str().unwrap());
    let list = b.out(&["list", "--format", "json"]);
    assert!(stdout(&list).contains(&b.id));
    let o = b.out(&["delete", &b.id]);
    assert!(
        !o.status.success(),
        "deleting a running container needs --force"
    );
    assert!(stderr(&o).contains("running"));
    assert!(b.out(&["kill", &b.id, "SIGKILL"]).status.success());
    b.wait_status("stopped");
    assert!(b.cgroup_dir("memory").exists() || b.cgroup_dir("pids").exists());
    let o = b.out(&["delete", &b.id]);
    assert!(o.status.success());
    b.assert_gone();
    let o = b.out(&["state", &b.id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
}

#[test]
fn exec_joins_the_pid_namespace_cgroup_and_reports_exit_codes() {
    require_root!();
    let b = Bundle::new("rt-exec", &["sleep", "60"]);
    b.create_start();
    let o = b.exec(&[
        "sh",
        "-c",
        "echo init=$(cat /proc/1/cmdline | tr '\\0' ' '); echo host=$(hostname); \
         echo cg=$(cut -d: -f3 /proc/self/cgroup | sort -u | tr '\\n' ' ')",
    ]);
    assert!(o.status.success());
    let out = stdout(&o);
    assert!(out.contains("init=sleep 60"), "{out}");
    assert!(out.contains("host=boat"), "{out}");
    // With a cgroup namespace the exec'd process sits at the namespace root.
    assert!(out.contains("cg=/\n"), "{out}");
    let o = b.exec(&[
        "--env",
        "A=b",
        "--cwd",
        "/tmp",
        "sh",
        "-c",
        "echo $A $(pwd); exit 5",
    ]);
    assert_eq!(o.status.code(), Some(5));
    assert_eq!(stdout(&o), "b /tmp\n");
    let o = b.exec(&["--user", "65534:65534", "id"]);
    assert!(stdout(&o).contains("uid=65534"), "{}", stdout(&o));
    let o = b.exec(&["--tty", "sh", "-c", "test -t 0 && test -t 1 && echo tty-ok"]);
    assert!(stdout(&o).contains("tty-ok"), "exec --tty gets a terminal");
    let o = b.exec(&["/no/such/program"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/no/such/program"));
    assert!(b.out(&["delete", "--force", &b.id]).status.success());
    b.assert_gone();
}

#[test]
fn bad_input_gets_clear_errors_and_leaves_nothing_behind() {
    require_root!();
    // Invalid field.
    let mut b = Bundle::new("rt-bad", &["/bin/true"]);
    b.config["linux"]["namespaces"][0]["type"] = json!("pidd");
    let o = b.run();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("linux.namespaces[0].type"),
        "{}",
        stderr(&o)
    );
    b.assert_gone();

    // Missing rootfs.
    let mut b = Bundle::new("rt-norootfs", &["/bin/true"]);
    b.config["root"]["path"] = json!("missing-rootfs");
    let o = b.run();
    assert!(stderr(&o).contains("root.path"), "{}", stderr(&o));
    assert!(stderr(&o).contains("missing-rootfs"));
    b.assert_gone();

    // A create that fails inside the container (no such program) cleans up.
    let b = Bundle::new("rt-noexe", &["/bin/nonexistent"]);
    let o = b.run();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("/bin/nonexistent"), "{}", stderr(&o));
    b.assert_gone();

    // Duplicate id; kill of an unknown id.
    let b = Bundle::new("rt-dup", &["sleep", "60"]);
    b.create_start();
    let bundle = b.path().to_str().unwrap().to_string();
    let o = b.out(&["create", "--bundle", &bundle, &b.id]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    assert_eq!(b.status(), "running", "the first container is untouched");
    let o = b.out(&["kill", "no-such-container", "TERM"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("does not exist"), "{}", stderr(&o));
    assert!(b.out(&["delete", "--force", &b.id]).status.success());
    b.assert_gone();
}

#[test]
fn run_with_terminal_gets_a_pty_from_the_container_devpts() {
    require_root!();
    let mut b = Bundle::new("rt-tty", &["sh", "-c", "test -t 0 && test -t 1 && tty"]);
    b.config["process"]["terminal"] = json!(true);
    let o = b.run();
    assert_eq!(o.status.code(), Some(0));
    // The pty comes from the container's own devpts instance and echoes CRLF.
    assert_eq!(stdout(&o), "/dev/pts/0\r\n");
    b.assert_gone();
}

#[test]
fn hooks_run_in_lifecycle_order_with_the_state_and_a_failing_one_aborts_create() {
    require_root!();
    let mut b = Bundle::new("rt-hooks", &["sh", "-c", "echo main >> /hooklog/log"]);
    let log = b.path().join("hooklog");
    std::fs::create_dir(&log).unwrap();
    let host = |name: &str| {
        json!({"path": "/bin/sh", "args": ["sh", "-c",
            format!("cat > {d}/{name}.json; echo {name} >> {d}/log", d = log.display())]})
    };
    b.config["mounts"].as_array_mut().unwrap().push(json!(
        {"destination": "/hooklog", "type": "bind", "source": log, "options": ["rbind", "rw"]}
    ));
    b.config["hooks"] = json!({
        "prestart": [host("prestart")],
        "createRuntime": [host("createRuntime")],
        "createContainer": [host("createContainer")],
        // Resolved inside the container, after pivot_root.
        "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c",
            "cat > /hooklog/startContainer.json; echo startContainer >> /hooklog/log"]}],
        "poststart": [host("poststart")],
        "poststop": [host("poststop")],
    });
    let o = b.run();
    assert!(o.status.success(), "run with hooks failed: {}", stderr(&o));
    let lines: Vec<String> = std::fs::read_to_string(log.join("log"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let hooks: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| *l != "main")
        .collect();
    assert_eq!(
        hooks,
        [
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop"
        ]
    );
    let main = lines.iter().position(|l| l == "main").expect("program ran");
    let start = lines.iter().position(|l| l == "startContainer").unwrap();
    assert!(
        main > start,
        "the program ran before startContainer: {lines:?}"
    );
    let state = |name: &str| -> Value {
        serde_json::from_slice(&std::fs::read(log.join(format!("{name}.json"))).unwrap())
            .unwrap_or_else(|e| panic!("{name} got no state JSON on stdin: {e}"))
    };
    let created = state("createRuntime");
    assert_eq!(created["id"], b.id.as_str());
    assert_eq!(created["status"], "creating");
    assert_eq!(created["bundle"], b.path().to_str().unwrap());
    let pid = created["pid"].as_i64().unwrap();
    assert!(pid > 1, "createRuntime sees the host pid: {created}");
    for (name, status) in [
        ("prestart", "creating"),
        ("createContainer", "creating"),
        ("startContainer", "created"),
        ("poststart", "running"),
        ("poststop", "stopped"),
    ] {
        let s = state(name);
        assert_eq!(s["status"], status, "{name}: {s}");
        assert_eq!(s["pid"].as_i64(), Some(pid), "{name}: {s}");
    }
    b.assert_gone();

    // A failing createRuntime hook fails the create, names the hook, leaves nothing.
    b.config["hooks"] = json!({"createRuntime": [host("ok"), {"path": "/bin/false"}]});
    let o = b.run();
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("hooks.createRuntime[1] (/bin/false): failed"),
        "{}",
        stderr(&o)
    );
    let after = std::fs::read_to_string(log.join("log")).unwrap();
    assert!(
        after.ends_with("poststop\nok\n"),
        "the program ran: {after}"
    );
    b.assert_gone();
}

/// Runs the runtime CLI as on a pure cgroup v2 host: inside a private mount namespace
/// where /sys/fs/cgroup is the unified hierarchy (the host's mounts are untouched).
fn out_as_pure_v2(b: &Bundle, args: &[&str]) -> Output {
    b.write();
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@""#)
        .arg("sh")
        .arg(bin("flotilla-agent"))
        .arg("runtime")
        .arg("--root")
        .arg(b.root())
        .args(args);
    let o = c.stdin(Stdio::null()).output().unwrap();
    eprintln!(
        "$ (pure v2) runtime {args:?} -> {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        stdout(&o),
        stderr(&o)
    );
    o
}

#[test]
fn pure_v2_host_joins_the_unified_cgroup_and_rejects_unenforceable_device_denies() {
    require_root!();
    let mut b = Bundle::new("rt-v2", &["cat", "/proc/self/cgroup"]);
    // No cgroup namespace, so that /proc/self/cgroup shows the full path.
    b.config["linux"]["namespaces"]
        .as_array_mut()
        .unwrap()
        .retain(|n| n["type"] != "cgroup");
    let (bundle, id) = (b.path().to_str().unwrap().to_string(), b.id.clone());
    let o = out_as_pure_v2(&b, &["run", "--bundle", &bundle, &id]);
    assert!(o.status.success(), "run on pure v2 failed: {}", stderr(&o));
    let want = format!("0::{}/{}", b.cg.path(), b.id);
    assert!(
        stdout(&o).lines().any(|l| l == want),
        "the container is not in {want}: {}",
        stdout(&o)
    );
    let unified = b.cg.unified().expect("a unified hierarchy").join(&b.id);
    assert!(!unified.exists(), "{} left behind", unified.display());

    // Denying one device cannot be enforced without an eBPF filter: a clear error.
    b.config["linux"]["resources"]["devices"] = json!([
        {"allow": true, "access": "rwm"},
        {"allow": false, "type": "c", "major": 1, "minor": 3, "access": "rwm"}
    ]);
    let o = out_as_pure_v2(&b, &["run", "--bundle", &bundle, &id]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("linux.resources.devices[1]") && stderr(&o).contains("cgroup v2"),
        "{}",
        stderr(&o)
    );
    assert!(!unified.exists(), "{} left behind", unified.display());
    b.assert_gone();
}
