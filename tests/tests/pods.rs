//! End-to-end tests of the pod lifecycle library (`flotilla_pods::Pods`) driven
//! directly: real containers from the busybox fixture image imported into a
//! flotilla-images store in a temp dir, the real `flotilla-agent shim`, cgroups under a
//! per-test parent. No controller is involved.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use flotilla_pods::{Config, Options, Pods, Update};
use flotilla_shared::pod::*;
use flotilla_shared::wire::AgentEvent;
use flotilla_tests::cgroup::TestCgroup;
use flotilla_tests::{bin, fixtures, require_root};

const IMAGE: &str = "flotilla/busybox:latest";

/// A node: data dir with the busybox image, runtime root, cgroup parent.
struct Node {
    dir: tempfile::TempDir,
    cg: TestCgroup,
}

impl Node {
    fn new(label: &str) -> Node {
        let dir = tempfile::Builder::new()
            .prefix("flotilla-pods-")
            .tempdir()
            .unwrap();
        let cg = TestCgroup::new(label);
        let out = Command::new(bin("flotilla-agent"))
            .arg("image")
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--quiet")
            .arg("import")
            .arg(fixtures::busybox_docker_archive())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Node { dir, cg }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn runtime_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    fn cgroup_root(&self) -> String {
        format!("{}/pods", self.cg.path())
    }

    fn start(&self) -> Agent {
        let (pods, rx) = Pods::start_with(
            Config {
                data_dir: self.data(),
                runtime_root: self.runtime_root(),
                node_name: "node1".into(),
            },
            Options {
                shim_exe: bin("flotilla-agent"),
                cgroup_root: self.cgroup_root(),
                registries: self.dir.path().join("registries.yaml"),
                ..Options::default()
            },
        )
        .unwrap();
        Agent {
            pods,
            rx,
            events: Vec::new(),
        }
    }
}

impl Drop for Node {
    /// Also after a failed test: nothing stays mounted below the node's dir (the
    /// cgroup parent's removal then stops whatever still runs).
    fn drop(&mut self) {
        let mut left = mounts_under(self.dir.path());
        left.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in left {
            let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A running `Pods` and the updates it sent.
struct Agent {
    pods: Pods,
    rx: async_channel::Receiver<Update>,
    events: Vec<AgentEvent>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.pods.shutdown();
    }
}

impl Agent {
    fn drain(&mut self) {
        while let Ok(u) = self.rx.try_recv() {
            if let Update::Event(e) = u {
                eprintln!("event {} {}: {}", e.pod_name, e.reason, e.message);
                self.events.push(e);
            }
        }
    }

    fn report(&self, uid: &str) -> Option<PodReport> {
        self.pods.reports().into_iter().find(|r| r.uid == uid)
    }

    /// Waits until the pod's report satisfies `what`.
    fn wait(
        &mut self,
        uid: &str,
        secs: u64,
        what: &str,
        ok: impl Fn(&PodReport) -> bool,
    ) -> PodReport {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            self.drain();
            if let Some(r) = self.report(uid)
                && ok(&r)
            {
                return r;
            }
            if Instant::now() > deadline {
                panic!("timed out waiting for {what}: {:#?}", self.report(uid));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn has_event(&mut self, reason: &str, contains: &str) -> bool {
        self.drain();
        self.events
            .iter()
            .any(|e| e.reason == reason && e.message.contains(contains))
    }

    fn logs(
        &self,
        uid: &str,
        container: &str,
        tail: i64,
        timestamps: bool,
        previous: bool,
    ) -> String {
        let mut r = self
            .pods
            .logs(&StreamRequest::Logs {
                pod_uid: uid.into(),
                container: container.into(),
                follow: false,
                previous,
                timestamps,
                tail_lines: tail,
                since_seconds: 0,
                limit_bytes: 0,
            })
            .unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        s
    }

    /// Runs a command in a container: (exit code, stdout).
    fn exec(&self, uid: &str, container: &str, cmd: &[&str]) -> (i32, String) {
        let mut s = self
            .pods
            .exec(&StreamRequest::Exec {
                pod_uid: uid.into(),
                container: container.into(),
                command: cmd.iter().map(|s| s.to_string()).collect(),
                stdin: false,
                stdout: true,
                stderr: false,
                tty: false,
            })
            .unwrap();
        let mut out = String::new();
        s.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        (s.wait().unwrap(), out)
    }
}

fn container(name: &str, script: &str) -> Container {
    Container {
        name: name.into(),
        image: IMAGE.into(),
        image_pull_policy: PullPolicy::IfNotPresent,
        command: vec!["sh".into(), "-c".into(), script.into()],
        args: vec![],
        working_dir: String::new(),
        env: vec![],
        ports: vec![],
        resources: Resources::default(),
        volume_mounts: vec![],
        liveness_probe: None,
        readiness_probe: None,
        startup_probe: None,
        security: ContainerSecurity::default(),
        tty: false,
        stdin: false,
    }
}

fn pod(name: &str, policy: RestartPolicy, containers: Vec<Container>) -> PodSpec {
    PodSpec {
        uid: format!("{name}-{}", std::process::id()),
        namespace: "default".into(),
        name: name.into(),
        revision: 1,
        deleting: false,
        init_containers: vec![],
        containers,
        restart_policy: policy,
        termination_grace_period_seconds: 1,
        active_deadline_seconds: 0,
        host_network: false,
        host_pid: false,
        host_ipc: false,
        hostname: name.into(),
        dns: DnsConfig {
            use_host: false,
            nameservers: vec!["10.43.0.10".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec![("ndots".into(), "5".into())],
        },
        volumes: vec![],
        security: PodSecurity::default(),
        labels: vec![],
        annotations: vec![],
    }
}

fn state(r: &PodReport, i: usize) -> &ContainerState {
    &r.containers[i].state
}

fn exit_of(s: &ContainerState) -> Option<(i32, &str)> {
    match s {
        ContainerState::Terminated {
            exit_code, reason, ..
        } => Some((*exit_code, reason.as_str())),
        _ => None,
    }
}

/// Mounts (from our mountinfo) below `dir`.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let d = dir.to_string_lossy().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&d))
        .map(str::to_string)
        .collect()
}

fn cgroup_dir_exists(rel: &str) -> bool {
    std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .any(|h| h.path().join(rel.trim_start_matches('/')).exists())
}

/// Deletes the pod (deleting → terminated) and then forgets it; checks that no
/// cgroup, mount or runtime state is left.
fn delete_and_check(agent: &mut Agent, node: &Node, mut spec: PodSpec) {
    spec.deleting = true;
    spec.revision += 1;
    let uid = spec.uid.clone();
    agent.pods.upsert(spec);
    agent.wait(&uid, 30, "terminated", |r| r.terminated);
    let pod_cg = format!("{}/pod-{uid}", node.cgroup_root());
    assert!(
        !cgroup_dir_exists(&pod_cg),
        "pod cgroup {pod_cg} left behind"
    );
    assert_eq!(
        mounts_under(&node.data().join("pods").join(&uid)),
        Vec::<String>::new()
    );
    let left: Vec<_> = std::fs::read_dir(node.runtime_root())
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&uid))
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "runtime state left: {left:?}");
    let snapshots = node.data().join("snapshots");
    let snaps: Vec<_> = std::fs::read_dir(&snapshots)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&uid))
                .collect()
        })
        .unwrap_or_default();
    assert!(snaps.is_empty(), "snapshots left: {snaps:?}");
    agent.pods.remove(&uid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.report(&uid).is_some() || node.data().join("pods").join(&uid).exists() {
        assert!(Instant::now() < deadline, "pod not forgotten");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pod_runs_reports_exit_codes_logs_and_is_deleted_cleanly() {
    require_root!();
    let node = Node::new("pods-run");
    let mut agent = node.start();
    let failing = pod(
        "failing",
        RestartPolicy::Never,
        vec![container(
            "main",
            "for i in 1 2 3 4 5; do echo line $i; done; echo oops >&2; hostname; cat /etc/resolv.conf; sleep 1; exit 3",
        )],
    );
    let fine = pod(
        "fine",
        RestartPolicy::Never,
        vec![container("main", "echo done")],
    );
    agent.pods.set_desired(vec![failing.clone(), fine.clone()]);
    let r = agent.wait(&failing.uid, 30, "Running", |r| {
        r.phase == PodPhase::Running
    });
    assert!(matches!(state(&r, 0), ContainerState::Running { .. }));
    assert!(r.containers[0].container_id.starts_with("flotilla://"));
    let r = agent.wait(&failing.uid, 30, "Failed", |r| r.phase == PodPhase::Failed);
    assert_eq!(exit_of(state(&r, 0)), Some((3, "Error")));
    assert_eq!(r.pod_ip, "", "pod IPs come with pod networking");
    let r = agent.wait(&fine.uid, 30, "Succeeded", |r| {
        r.phase == PodPhase::Succeeded
    });
    assert_eq!(exit_of(state(&r, 0)), Some((0, "Completed")));
    // A finished pod gives back its namespaces and cgroup before it is deleted.
    let pod_dir = node.data().join("pods").join(&fine.uid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mounts_under(&pod_dir).is_empty() {
        assert!(Instant::now() < deadline, "finished pod kept its sandbox");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pod_cg = format!("{}/pod-{}", node.cgroup_root(), fine.uid);
    assert!(!cgroup_dir_exists(&pod_cg), "finished pod kept its cgroup");
    assert!(agent.has_event("Pulled", "already present on machine"));
    assert!(agent.has_event("Created", "main"));
    assert!(agent.has_event("Started", "main"));

    let all = agent.logs(&failing.uid, "main", -1, false, false);
    // stdout and stderr are copied separately: order holds within each stream.
    let stdout: Vec<&str> = all.lines().filter(|l| *l != "oops").collect();
    assert_eq!(
        stdout[..5],
        ["line 1", "line 2", "line 3", "line 4", "line 5"],
        "{all}"
    );
    assert!(all.contains("oops\n"), "stderr: {all}");
    assert!(all.contains("\nfailing\n"), "hostname: {all}");
    assert!(all.contains("nameserver 10.43.0.10\n"), "{all}");
    assert!(all.contains("search default.svc.cluster.local\n"), "{all}");
    let tail = agent.logs(&fine.uid, "main", 1, false, false);
    assert_eq!(tail, "done\n");
    let lines = agent.logs(&failing.uid, "main", -1, true, false);
    // Each line carries its time; the text is the same as without.
    let mut texts = Vec::new();
    for line in lines.lines() {
        let (ts, text) = line.split_once(' ').unwrap();
        assert!(ts.ends_with('Z') && ts.contains('T'), "{line}");
        texts.push(text);
    }
    assert_eq!(texts, all.lines().collect::<Vec<_>>());
    let e = agent
        .pods
        .logs(&StreamRequest::Logs {
            pod_uid: fine.uid.clone(),
            container: "main".into(),
            follow: false,
            previous: true,
            timestamps: false,
            tail_lines: -1,
            since_seconds: 0,
            limit_bytes: 0,
        })
        .err()
        .unwrap();
    assert!(
        e.to_string().contains("previous terminated container"),
        "{e}"
    );

    delete_and_check(&mut agent, &node, failing);
    delete_and_check(&mut agent, &node, fine);
}

#[test]
fn restart_always_backs_off_and_counts_restarts() {
    require_root!();
    let node = Node::new("pods-restart");
    let mut agent = node.start();
    let p = pod(
        "crashy",
        RestartPolicy::Always,
        vec![container("main", "echo attempt; exit 2")],
    );
    agent.pods.upsert(p.clone());
    // The first restart is immediate; the next waits 10 s.
    let r = agent.wait(&p.uid, 30, "first restart", |r| {
        r.containers[0].restart_count == 1
    });
    assert_eq!(r.phase, PodPhase::Running);
    let r = agent.wait(&p.uid, 15, "CrashLoopBackOff", |r| {
        matches!(state(r, 0), ContainerState::Waiting { reason, .. } if reason == "CrashLoopBackOff")
    });
    let since = Instant::now();
    let ContainerState::Waiting { message, .. } = state(&r, 0) else {
        unreachable!()
    };
    assert!(message.contains("back-off 10s"), "{message}");
    assert!(
        matches!(
            &r.containers[0].last_state,
            Some(ContainerState::Terminated { exit_code: 2, .. })
        ),
        "{r:#?}"
    );
    assert!(agent.has_event("BackOff", "Back-off restarting failed container"));
    agent.wait(&p.uid, 20, "second restart", |r| {
        r.containers[0].restart_count == 2
    });
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_secs(7),
        "restarted after {waited:?}, before its back-off"
    );
    let r = agent.wait(&p.uid, 10, "longer back-off", |r| {
        matches!(state(r, 0), ContainerState::Waiting { message, .. } if message.contains("back-off 20s"))
    });
    assert_eq!(r.containers[0].restart_count, 2);
    assert_eq!(agent.logs(&p.uid, "main", -1, false, true), "attempt\n");
    // Only the current and the previous attempt keep their files.
    let dir = node.data().join("pods").join(&p.uid).join("main");
    let mut logs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.strip_suffix(".log")
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .collect();
    logs.sort();
    assert_eq!(logs, ["1.log", "2.log"]);
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn memory_limit_reports_oom_killed() {
    require_root!();
    let node = Node::new("pods-oom");
    let mut agent = node.start();
    let mut c = container("hog", "dd if=/dev/zero of=/dev/null bs=64M count=4");
    c.resources.memory_limit_bytes = 16 << 20;
    let p = pod("hog", RestartPolicy::Never, vec![c]);
    agent.pods.upsert(p.clone());
    let r = agent.wait(&p.uid, 30, "Failed", |r| r.phase == PodPhase::Failed);
    assert_eq!(exit_of(state(&r, 0)), Some((137, "OOMKilled")), "{r:#?}");
    delete_and_check(&mut agent, &node, p);
}

fn exec_probe(cmd: &str, period: u32, failure: u32) -> Probe {
    Probe {
        action: ProbeAction::Exec {
            command: vec!["sh".into(), "-c".into(), cmd.into()],
        },
        initial_delay_seconds: 0,
        period_seconds: period,
        timeout_seconds: 5,
        success_threshold: 1,
        failure_threshold: failure,
    }
}

#[test]
fn liveness_failure_restarts_and_readiness_flips_ready() {
    require_root!();
    let node = Node::new("pods-probes");
    let mut agent = node.start();
    let mut live = container(
        "live",
        "touch /tmp/healthy; sleep 2; rm /tmp/healthy; exec sleep 1000",
    );
    live.liveness_probe = Some(exec_probe("test -f /tmp/healthy", 1, 2));
    // The tcp readiness probe reaches a listener in the pod's own network namespace,
    // there for 8 s.
    let mut ready = container(
        "ready",
        "sleep 2; httpd -f -p 8080 & pid=$!; sleep 8; kill $pid; exec sleep 1000",
    );
    ready.readiness_probe = Some(Probe {
        action: ProbeAction::TcpSocket {
            port: 8080,
            host: String::new(),
        },
        ..exec_probe("", 1, 1)
    });
    // A web server gated by a startup probe, ready through an HTTP probe.
    let mut web = container(
        "web",
        "mkdir -p /www; echo ok > /www/index.html; sleep 2; touch /tmp/started; exec httpd -f -p 8081 -h /www",
    );
    web.startup_probe = Some(exec_probe("test -f /tmp/started", 1, 30));
    web.readiness_probe = Some(Probe {
        action: ProbeAction::HttpGet {
            path: "/index.html".into(),
            port: 8081,
            host: String::new(),
            https: false,
            headers: vec![("X-Probe".into(), "1".into())],
        },
        ..exec_probe("", 1, 1)
    });
    let p = pod("probed", RestartPolicy::Always, vec![live, ready, web]);
    agent.pods.upsert(p.clone());
    let r = agent.wait(&p.uid, 30, "probed containers started", |r| {
        r.containers[..2].iter().all(|c| c.started)
    });
    assert!(
        !r.containers[2].started,
        "started before its startup probe passed"
    );
    assert!(!r.containers[2].ready);
    assert!(!r.containers[1].ready, "ready before its probe passed");
    assert!(!r.containers_ready);
    agent.wait(&p.uid, 20, "ready", |r| r.containers[1].ready);
    agent.wait(&p.uid, 20, "web started and ready over HTTP", |r| {
        r.containers[2].started && r.containers[2].ready
    });
    agent.wait(&p.uid, 20, "not ready again", |r| !r.containers[1].ready);
    let r = agent.wait(&p.uid, 30, "liveness restart", |r| {
        r.containers[0].restart_count >= 1
    });
    assert!(agent.has_event("Unhealthy", "Liveness probe failed"));
    assert!(agent.has_event("Killing", "failed liveness probe"));
    assert!(r.containers[0].last_state.is_some());
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn volumes_are_shared_and_exec_returns_exit_codes() {
    require_root!();
    let node = Node::new("pods-volumes");
    let mut agent = node.start();
    let mount = |name: &str, path: &str, ro: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        sub_path: String::new(),
        read_only: ro,
    };
    let mut writer = container("writer", "echo shared > /data/x; exec sleep 1000");
    writer.volume_mounts = vec![mount("scratch", "/data", false)];
    let mut reader = container(
        "reader",
        "while ! test -f /data/x; do sleep 0.1; done; cat /data/x; exec sleep 1000",
    );
    reader.volume_mounts = vec![
        mount("scratch", "/data", false),
        mount("conf", "/etc/conf", true),
        mount("mem", "/mem", false),
    ];
    let mut p = pod("vols", RestartPolicy::Always, vec![writer, reader]);
    p.security.fs_group = Some(2000);
    let files = |data: &str| VolumeSource::Files {
        files: vec![VolumeFile {
            path: "app.conf".into(),
            data: data.as_bytes().to_vec(),
            mode: 0o600,
        }],
        default_mode: 0o644,
    };
    p.volumes = vec![
        Volume {
            name: "scratch".into(),
            source: VolumeSource::EmptyDir {
                memory: false,
                size_limit_bytes: 0,
            },
        },
        Volume {
            name: "conf".into(),
            source: files("v1"),
        },
        Volume {
            name: "mem".into(),
            source: VolumeSource::EmptyDir {
                memory: true,
                size_limit_bytes: 1 << 20,
            },
        },
    ];
    agent.pods.upsert(p.clone());
    agent.wait(&p.uid, 30, "running", |r| {
        r.containers.iter().all(|c| c.started)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.logs(&p.uid, "reader", -1, false, false) != "shared\n" {
        assert!(
            Instant::now() < deadline,
            "reader never saw the writer's file"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        agent.exec(&p.uid, "reader", &["cat", "/etc/conf/app.conf"]),
        (0, "v1".into())
    );
    let (code, out) = agent.exec(
        &p.uid,
        "reader",
        &["stat", "-L", "-c", "%a", "/etc/conf/app.conf"],
    );
    assert_eq!((code, out.trim()), (0, "600"));
    // fsGroup: the files belong to the pod's group, which its processes carry.
    let (code, out) = agent.exec(
        &p.uid,
        "reader",
        &["sh", "-c", "stat -L -c %g /etc/conf/app.conf; id -G"],
    );
    assert_eq!(code, 0);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("2000"), "{out}");
    assert!(
        lines.next().unwrap().split(' ').any(|g| g == "2000"),
        "{out}"
    );
    // stdin reaches the process; closing it ends `cat`.
    let mut s = agent
        .pods
        .exec(&StreamRequest::Exec {
            pod_uid: p.uid.clone(),
            container: "reader".into(),
            command: vec!["cat".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: false,
        })
        .unwrap();
    s.stdin.take().unwrap().write_all(b"through stdin").unwrap();
    let mut out = String::new();
    s.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(out, "through stdin");
    assert_eq!(s.wait().unwrap(), 0);
    assert_eq!(agent.exec(&p.uid, "reader", &["sh", "-c", "exit 7"]).0, 7);
    let (code, _) = agent.exec(&p.uid, "reader", &["sh", "-c", "echo x > /etc/conf/new"]);
    assert_ne!(code, 0, "a readOnly mount was writable");
    let (code, out) = agent.exec(
        &p.uid,
        "reader",
        &["sh", "-c", "grep ' /mem ' /proc/mounts"],
    );
    assert_eq!(code, 0);
    assert!(out.contains("tmpfs"), "{out}");
    // A new revision rewrites the files in place.
    p.revision = 2;
    p.volumes[1].source = files("v2");
    agent.pods.upsert(p.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent
        .exec(&p.uid, "reader", &["cat", "/etc/conf/app.conf"])
        .1
        != "v2"
    {
        assert!(Instant::now() < deadline, "files volume not refreshed");
        std::thread::sleep(Duration::from_millis(200));
    }
    let e = agent
        .pods
        .exec(&StreamRequest::Exec {
            pod_uid: p.uid.clone(),
            container: "nope".into(),
            command: vec!["true".into()],
            stdin: false,
            stdout: true,
            stderr: false,
            tty: false,
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("not valid"), "{e}");
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn a_new_agent_adopts_running_containers_without_restarting_them() {
    require_root!();
    let node = Node::new("pods-adopt");
    let mut agent = node.start();
    let p = pod(
        "steady",
        RestartPolicy::Always,
        vec![container("main", "echo up; exec sleep 1000")],
    );
    agent.pods.upsert(p.clone());
    let before = agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    agent.pods.shutdown();
    drop(agent);
    let mut agent = node.start();
    let after = agent.wait(&p.uid, 10, "adopted", |r| r.phase == PodPhase::Running);
    assert_eq!(
        after.containers[0].container_id,
        before.containers[0].container_id
    );
    assert_eq!(after.containers[0].restart_count, 0);
    assert_eq!(state(&after, 0), state(&before, 0), "started_at changed");
    std::thread::sleep(Duration::from_secs(2));
    let still = agent.report(&p.uid).unwrap();
    assert_eq!(still.containers[0].restart_count, 0);
    assert_eq!(agent.exec(&p.uid, "main", &["true"]).0, 0);
    assert_eq!(agent.logs(&p.uid, "main", -1, false, false), "up\n");
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn init_containers_run_in_order_before_the_app() {
    require_root!();
    let node = Node::new("pods-init");
    let mut agent = node.start();
    let data = VolumeMount {
        name: "work".into(),
        mount_path: "/work".into(),
        sub_path: String::new(),
        read_only: false,
    };
    let mut first = container("first", "echo one >> /work/order");
    first.volume_mounts = vec![data.clone()];
    let mut second = container("second", "sleep 1; echo two >> /work/order");
    second.volume_mounts = vec![data.clone()];
    let mut app = container("app", "cat /work/order; exec sleep 1000");
    app.volume_mounts = vec![data];
    let mut p = pod("inits", RestartPolicy::Always, vec![app]);
    p.init_containers = vec![first, second];
    p.volumes = vec![Volume {
        name: "work".into(),
        source: VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: 0,
        },
    }];
    agent.pods.upsert(p.clone());
    let r = agent.wait(&p.uid, 30, "second init running", |r| {
        matches!(r.init_containers[1].state, ContainerState::Running { .. })
    });
    assert!(!r.initialized);
    assert_eq!(r.phase, PodPhase::Pending);
    assert!(
        matches!(&r.containers[0].state, ContainerState::Waiting { reason, .. } if reason == "PodInitializing"),
        "{r:#?}"
    );
    let r = agent.wait(&p.uid, 30, "app running", |r| r.containers_ready);
    assert!(r.initialized);
    assert_eq!(r.phase, PodPhase::Running);
    assert!(
        r.init_containers
            .iter()
            .all(|c| exit_of(&c.state) == Some((0, "Completed")))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.logs(&p.uid, "app", -1, false, false) != "one\ntwo\n" {
        assert!(
            Instant::now() < deadline,
            "init containers did not run in order"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    delete_and_check(&mut agent, &node, p);

    // A failing init container fails a pod that never restarts; the app never starts.
    let mut bad = pod(
        "badinit",
        RestartPolicy::Never,
        vec![container("app", "echo should not run")],
    );
    bad.init_containers = vec![container("check", "exit 4")];
    agent.pods.upsert(bad.clone());
    let r = agent.wait(&bad.uid, 30, "Failed", |r| r.phase == PodPhase::Failed);
    assert_eq!(exit_of(&r.init_containers[0].state), Some((4, "Error")));
    assert!(matches!(
        r.containers[0].state,
        ContainerState::Waiting { .. }
    ));
    assert_eq!(r.containers[0].container_id, "");
    delete_and_check(&mut agent, &node, bad);
}

#[test]
fn deletion_sends_sigterm_first_and_security_context_applies() {
    require_root!();
    let node = Node::new("pods-term");
    let mut agent = node.start();
    // A shell as pid 1 ignores SIGTERM unless it traps it: this one exits 42 on it.
    let mut c = container(
        "main",
        "trap 'echo got TERM; exit 42' TERM; id -u; id -g; touch /x 2>/dev/null || echo read-only; while true; do sleep 0.1; done",
    );
    c.security.run_as_user = Some(1234);
    c.security.run_as_group = Some(5678);
    c.security.read_only_root_filesystem = true;
    let mut p = pod("term", RestartPolicy::Always, vec![c]);
    p.termination_grace_period_seconds = 30;
    agent.pods.upsert(p.clone());
    agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while agent.logs(&p.uid, "main", -1, false, false) != "1234\n5678\nread-only\n" {
        assert!(
            Instant::now() < deadline,
            "{}",
            agent.logs(&p.uid, "main", -1, false, false)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let began = Instant::now();
    p.deleting = true;
    p.revision += 1;
    agent.pods.upsert(p.clone());
    let r = agent.wait(&p.uid, 20, "terminated", |r| r.terminated);
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "waited for the grace period instead of SIGTERM"
    );
    assert_eq!(exit_of(state(&r, 0)), Some((42, "Error")), "{r:#?}");
    assert!(agent.has_event("Killing", "Stopping container main"));
    agent.pods.remove(&p.uid);
}

#[test]
fn follow_logs_and_exec_with_a_terminal() {
    require_root!();
    let node = Node::new("pods-follow");
    let mut agent = node.start();
    let p = pod(
        "talker",
        RestartPolicy::Never,
        vec![container(
            "main",
            "for i in 1 2 3 4 5; do echo tick $i; sleep 1; done",
        )],
    );
    agent.pods.upsert(p.clone());
    agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    let mut follow = agent
        .pods
        .logs(&StreamRequest::Logs {
            pod_uid: p.uid.clone(),
            container: "main".into(),
            follow: true,
            previous: false,
            timestamps: false,
            tail_lines: -1,
            since_seconds: 0,
            limit_bytes: 0,
        })
        .unwrap();
    // A terminal session while it runs: stty sees the size we set.
    let mut s = agent
        .pods
        .exec(&StreamRequest::Exec {
            pod_uid: p.uid.clone(),
            container: "main".into(),
            command: vec!["sh".into()],
            stdin: true,
            stdout: true,
            stderr: true,
            tty: true,
        })
        .unwrap();
    assert!(s.stderr.is_none(), "a terminal merges stderr into stdout");
    s.resize(91, 27).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let mut stdin = s.stdin.take().unwrap();
    stdin.write_all(b"stty size; exit 5\n").unwrap();
    let mut out = String::new();
    s.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(out.contains("27 91"), "{out:?}");
    assert_eq!(s.wait().unwrap(), 5);
    // Following ends when the container does.
    let mut text = String::new();
    follow.read_to_string(&mut text).unwrap();
    assert_eq!(text, "tick 1\ntick 2\ntick 3\ntick 4\ntick 5\n");
    agent.wait(&p.uid, 10, "Succeeded", |r| r.phase == PodPhase::Succeeded);
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn images_are_pulled_per_policy_with_events_and_back_off() {
    require_root!();
    let registry = flotilla_tests::registry::Registry::start();
    let image = registry.push_busybox("fleet/pulled:1");
    let node = Node::new("pods-pull");
    let mut agent = node.start();
    let mut c = container("main", "echo pulled");
    c.image = image.clone();
    c.image_pull_policy = PullPolicy::Always;
    let p = pod("pull", RestartPolicy::Never, vec![c]);
    agent.pods.upsert(p.clone());
    let r = agent.wait(&p.uid, 60, "Succeeded", |r| r.phase == PodPhase::Succeeded);
    assert!(r.containers[0].image_id.starts_with("sha256:"), "{r:#?}");
    assert!(agent.has_event("Pulling", &image));
    assert!(agent.has_event("Pulled", "Successfully pulled image"));
    assert_eq!(agent.logs(&p.uid, "main", -1, false, false), "pulled\n");

    let mut c = container("main", "true");
    c.image = format!("{}/fleet/missing:1", registry.addr());
    let missing = pod("missing", RestartPolicy::Never, vec![c]);
    agent.pods.upsert(missing.clone());
    agent.wait(&missing.uid, 60, "ErrImagePull", |r| {
        matches!(state(r, 0), ContainerState::Waiting { reason, .. } if reason == "ErrImagePull")
    });
    assert!(agent.has_event("Failed", "Failed to pull image"));
    agent.wait(&missing.uid, 30, "ImagePullBackOff", |r| {
        matches!(state(r, 0), ContainerState::Waiting { reason, .. } if reason == "ImagePullBackOff")
    });
    let mut c = container("main", "true");
    c.image = "fleet/absent:1".into();
    c.image_pull_policy = PullPolicy::Never;
    let never = pod("never", RestartPolicy::Never, vec![c]);
    agent.pods.upsert(never.clone());
    agent.wait(&never.uid, 30, "ErrImageNeverPull", |r| {
        matches!(state(r, 0), ContainerState::Waiting { reason, .. } if reason == "ErrImageNeverPull")
    });
    delete_and_check(&mut agent, &node, p);
    delete_and_check(&mut agent, &node, missing);
    delete_and_check(&mut agent, &node, never);
}

#[test]
fn an_exit_while_the_agent_is_down_is_reported_after_restart() {
    require_root!();
    let node = Node::new("pods-down");
    let mut agent = node.start();
    let p = pod(
        "brief",
        RestartPolicy::Never,
        vec![container("main", "sleep 2; exit 9")],
    );
    agent.pods.upsert(p.clone());
    agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    drop(agent);
    std::thread::sleep(Duration::from_secs(3));
    let mut agent = node.start();
    let r = agent.wait(&p.uid, 10, "Failed", |r| r.phase == PodPhase::Failed);
    assert_eq!(exit_of(state(&r, 0)), Some((9, "Error")));
    assert_eq!(r.containers[0].restart_count, 0);
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn host_paths_are_checked_host_network_is_shared_and_deadlines_fail_pods() {
    require_root!();
    let node = Node::new("pods-host");
    let mut agent = node.start();
    let shared = node.dir.path().join("host-share");
    let mut c = container("main", "echo from-pod > /share/hello; exec sleep 1000");
    c.volume_mounts = vec![VolumeMount {
        name: "share".into(),
        mount_path: "/share".into(),
        sub_path: String::new(),
        read_only: false,
    }];
    let mut p = pod("hostly", RestartPolicy::Always, vec![c.clone()]);
    p.host_network = true;
    p.active_deadline_seconds = 6;
    p.volumes = vec![Volume {
        name: "share".into(),
        source: VolumeSource::HostPath {
            path: shared.to_string_lossy().into(),
            kind: "DirectoryOrCreate".into(),
        },
    }];
    agent.pods.upsert(p.clone());
    agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(shared.join("hello"))
        .ok()
        .as_deref()
        != Some("from-pod\n")
    {
        assert!(Instant::now() < deadline, "hostPath not shared");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The host's network namespace: the same one this test runs in.
    let (code, out) = agent.exec(&p.uid, "main", &["readlink", "/proc/self/ns/net"]);
    assert_eq!(code, 0);
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(out.trim(), ours.to_string_lossy());
    let r = agent.wait(&p.uid, 20, "DeadlineExceeded", |r| {
        r.phase == PodPhase::Failed && matches!(state(r, 0), ContainerState::Terminated { .. })
    });
    assert_eq!(r.reason, "DeadlineExceeded");
    assert!(agent.has_event("DeadlineExceeded", "deadline"));
    delete_and_check(&mut agent, &node, p);

    // A hostPath whose type does not match keeps the pod from starting.
    let mut bad = pod("badhost", RestartPolicy::Always, vec![c]);
    bad.volumes = vec![Volume {
        name: "share".into(),
        source: VolumeSource::HostPath {
            path: shared.join("hello").to_string_lossy().into(),
            kind: "Directory".into(),
        },
    }];
    agent.pods.upsert(bad.clone());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.has_event("FailedMount", "is not a Directory") {
        assert!(Instant::now() < deadline, "no FailedMount event");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = agent.report(&bad.uid).unwrap();
    assert_eq!(r.phase, PodPhase::Pending);
    assert_eq!(r.containers[0].container_id, "");
    delete_and_check(&mut agent, &node, bad);
}

#[test]
fn on_failure_restarts_until_success_then_succeeds() {
    require_root!();
    let node = Node::new("pods-onfailure");
    let mut agent = node.start();
    let mut c = container(
        "main",
        "if test -f /state/failed; then echo second; exit 0; fi; touch /state/failed; echo first; exit 1",
    );
    c.volume_mounts = vec![VolumeMount {
        name: "state".into(),
        mount_path: "/state".into(),
        sub_path: String::new(),
        read_only: false,
    }];
    let mut p = pod("retry", RestartPolicy::OnFailure, vec![c]);
    p.volumes = vec![Volume {
        name: "state".into(),
        source: VolumeSource::EmptyDir {
            memory: false,
            size_limit_bytes: 0,
        },
    }];
    agent.pods.upsert(p.clone());
    let r = agent.wait(&p.uid, 30, "Succeeded", |r| r.phase == PodPhase::Succeeded);
    assert_eq!(r.containers[0].restart_count, 1);
    assert_eq!(exit_of(state(&r, 0)), Some((0, "Completed")));
    assert!(matches!(
        r.containers[0].last_state,
        Some(ContainerState::Terminated { exit_code: 1, .. })
    ));
    assert_eq!(agent.logs(&p.uid, "main", -1, false, true), "first\n");
    assert_eq!(agent.logs(&p.uid, "main", -1, false, false), "second\n");
    // It stays done: no further attempt.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(agent.report(&p.uid).unwrap().containers[0].restart_count, 1);
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn an_agent_that_lost_its_state_removes_what_no_pod_owns() {
    require_root!();
    let node = Node::new("pods-orphans");
    let mut agent = node.start();
    let p = pod(
        "orphan",
        RestartPolicy::Always,
        vec![container("main", "exec sleep 1000")],
    );
    agent.pods.upsert(p.clone());
    agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    drop(agent);
    std::fs::remove_file(node.data().join("state.redb")).unwrap();
    let agent = node.start();
    assert!(agent.pods.reports().is_empty());
    let left: Vec<_> = std::fs::read_dir(node.runtime_root())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "runtime state left: {left:?}");
    assert_eq!(mounts_under(node.dir.path()), Vec::<String>::new());
    assert!(!node.data().join("pods").join(&p.uid).exists());
    let pod_cg = format!("{}/pod-{}", node.cgroup_root(), p.uid);
    assert!(
        !cgroup_dir_exists(&pod_cg),
        "pod cgroup {pod_cg} left behind"
    );
}

#[test]
fn a_new_image_in_the_spec_replaces_the_container() {
    require_root!();
    let node = Node::new("pods-image");
    let out = Command::new(bin("flotilla-agent"))
        .arg("image")
        .arg("--data-dir")
        .arg(node.data())
        .args(["--quiet", "import", "--name", "fleet/other:2"])
        .arg(fixtures::busybox_docker_archive())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut agent = node.start();
    let mut p = pod(
        "upgrade",
        RestartPolicy::Always,
        vec![container("main", "exec sleep 1000")],
    );
    p.termination_grace_period_seconds = 0;
    agent.pods.upsert(p.clone());
    let before = agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    p.revision += 1;
    p.containers[0].image = "fleet/other:2".into();
    agent.pods.upsert(p.clone());
    let after = agent.wait(&p.uid, 30, "replaced", |r| {
        r.containers[0].restart_count == 1 && matches!(state(r, 0), ContainerState::Running { .. })
    });
    assert_ne!(
        after.containers[0].container_id,
        before.containers[0].container_id
    );
    assert_eq!(after.containers[0].image, "fleet/other:2");
    assert!(agent.has_event("Killing", "definition changed"));
    assert!(!agent.has_event("BackOff", ""));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(agent.report(&p.uid).unwrap().containers[0].restart_count, 1);
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn a_pod_added_again_while_being_removed_starts_afresh() {
    require_root!();
    let node = Node::new("pods-readd");
    let mut agent = node.start();
    let p = pod(
        "again",
        RestartPolicy::Always,
        vec![container("main", "exec sleep 1000")],
    );
    agent.pods.upsert(p.clone());
    let first = agent.wait(&p.uid, 30, "running", |r| r.phase == PodPhase::Running);
    agent.pods.remove(&p.uid);
    // While the container is stopping (it ignores SIGTERM: 1 s of grace) the pod
    // comes back; the removal completes, then the pod starts from scratch.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.has_event("Killing", "Stopping container main") {
        assert!(
            Instant::now() < deadline,
            "removal did not stop the container"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    agent.pods.upsert(p.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        agent.drain();
        let started = agent
            .events
            .iter()
            .filter(|e| e.reason == "Started")
            .count();
        let running = agent
            .report(&p.uid)
            .is_some_and(|r| r.phase == PodPhase::Running && !r.terminated);
        if started == 2 && running {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not started again: {started} starts"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = agent.report(&p.uid).unwrap();
    assert_eq!(second.containers[0].restart_count, 0);
    assert_eq!(
        second.containers[0].container_id,
        first.containers[0].container_id
    );
    delete_and_check(&mut agent, &node, p);
}

#[test]
fn with_host_pid_leftover_processes_neither_hide_the_exit_nor_survive() {
    require_root!();
    let node = Node::new("pods-hostpid");
    let mut agent = node.start();
    // The background sleep keeps the output pipes open after the shell exits.
    let mut p = pod(
        "leftover",
        RestartPolicy::Never,
        vec![container("main", "sleep 1000 & echo started; exit 3")],
    );
    p.host_pid = true;
    agent.pods.upsert(p.clone());
    let r = agent.wait(&p.uid, 30, "Failed", |r| r.phase == PodPhase::Failed);
    assert_eq!(exit_of(state(&r, 0)), Some((3, "Error")));
    assert_eq!(agent.logs(&p.uid, "main", -1, false, false), "started\n");
    // Its cgroup went with it, so the sleep did too.
    let pod_cg = format!("{}/pod-{}", node.cgroup_root(), p.uid);
    let deadline = Instant::now() + Duration::from_secs(10);
    while cgroup_dir_exists(&pod_cg) {
        assert!(
            Instant::now() < deadline,
            "the leftover process kept the cgroup"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    delete_and_check(&mut agent, &node, p);
}

/// A TLS server on 127.0.0.1 answering every request with `200 OK`, for HTTPS
/// probes; it serves until the test process ends.
fn https_server() -> u16 {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for tcp in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                let mut buf = [0u8; 1024];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
                let _ = s.flush();
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
    port
}

#[test]
fn https_probes_do_not_verify_the_certificate() {
    require_root!();
    let port = https_server();
    let node = Node::new("pods-https");
    let mut agent = node.start();
    let mut c = container("main", "exec sleep 1000");
    c.readiness_probe = Some(Probe {
        action: ProbeAction::HttpGet {
            path: "/healthz".into(),
            port,
            host: String::new(),
            https: true,
            headers: vec![],
        },
        ..exec_probe("", 1, 1)
    });
    // A second probe on a port nobody listens on fails.
    let mut d = c.clone();
    d.name = "closed".into();
    if let Some(Probe {
        action: ProbeAction::HttpGet { port: p, .. },
        ..
    }) = d.readiness_probe.as_mut()
    {
        *p = flotilla_tests::free_port();
    }
    let mut p = pod("secure", RestartPolicy::Always, vec![c, d]);
    p.host_network = true;
    agent.pods.upsert(p.clone());
    agent.wait(&p.uid, 30, "ready over HTTPS", |r| r.containers[0].ready);
    std::thread::sleep(Duration::from_secs(2));
    let r = agent.report(&p.uid).unwrap();
    assert!(r.containers[0].ready);
    assert!(!r.containers[1].ready);
    assert!(!r.containers_ready);
    assert!(agent.has_event("Unhealthy", "Readiness probe failed"));
    delete_and_check(&mut agent, &node, p);
}
