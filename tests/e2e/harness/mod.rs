//! A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok, built from Go modules by `tests/e2e/toolchain/build.sh` and cached.
//!
//! Every process binds to 127.0.0.1 on a free port and is killed when the [`Cluster`] is
//! dropped, so several clusters can run side by side and a failing test leaves nothing behind.

#![allow(dead_code)]

use anyhow::{Context as _, bail};
use std::{
    fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub mod certs;
pub mod cronhpa;
pub mod metadata;

/// The Kubernetes version the toolchain builds.
pub const KUBERNETES_VERSION: &str = "v1.36.3";

/// Directory holding the built control-plane binaries, building them on first use.
pub fn toolchain_bin() -> anyhow::Result<PathBuf> {
    match std::env::var("FLASHSALE_TOOLCHAIN_BIN") {
        Ok(dir) => Ok(PathBuf::from(dir)),
        Err(_) => built("tests/e2e/toolchain/build.sh"),
    }
}

/// Runs one of the toolchain's build scripts (a path relative to the repository) and returns
/// the bin directory it prints as its last line. The scripts are near-instant once cached.
pub fn built(script: &str) -> anyhow::Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout.lines().last().with_context(|| format!("{} printed nothing", script.display()))?.trim();
    Ok(PathBuf::from(dir))
}

/// What [`Cluster::start_audited`] records: the metadata of each request once it is answered,
/// except the control plane's and the admin's (all in `system:masters`).
const AUDIT_POLICY: &str = r#"apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted"]
rules:
- level: None
  userGroups: ["system:masters"]
- level: Metadata
"#;

/// Options for a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub name: String,
    /// On-demand worker nodes (kwok).
    pub nodes: usize,
    /// Spot nodes, labelled `node.kubernetes.io/instance-lifecycle=spot`.
    pub spot_nodes: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions { name: "e2e".into(), nodes: 3, spot_nodes: 2 }
    }
}

/// A running control plane.
pub struct Cluster {
    pub name: String,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub server: String,
    bin: PathBuf,
    processes: Vec<(String, Child)>,
    /// Arguments each component was started with, to restart it the same way.
    args: Vec<(String, Vec<String>)>,
    etcd_data: PathBuf,
    keep_dir: bool,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Cluster {
    /// Starts a cluster in `dir` (created, and removed again on drop unless `keep_dir`).
    pub fn start(opts: &ClusterOptions, dir: &Path, keep_dir: bool) -> anyhow::Result<Cluster> {
        Self::start_with(opts, dir, keep_dir, false)
    }

    /// [`Cluster::start`] with the API server's audit log in `<dir>/audit.log`: one JSON line per
    /// request of every user outside `system:masters` (the control plane's own components and
    /// the admin are left out), for benchmarks that count what a client asked of the cluster.
    #[allow(dead_code)]
    pub fn start_audited(opts: &ClusterOptions, dir: &Path, keep_dir: bool) -> anyhow::Result<Cluster> {
        Self::start_with(opts, dir, keep_dir, true)
    }

    fn start_with(opts: &ClusterOptions, dir: &Path, keep_dir: bool, audit: bool) -> anyhow::Result<Cluster> {
        let bin = toolchain_bin()?;
        fs::create_dir_all(dir)?;
        let dir = dir.canonicalize()?;
        let pki = certs::Pki::generate(&dir.join("pki"))?;
        let etcd_port = free_port()?;
        let etcd_peer = free_port()?;
        let api_port = free_port()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = dir.join("kubeconfig");
        fs::write(&kubeconfig, pki.kubeconfig(&server, &opts.name))?;

        let etcd_data = dir.join("etcd");
        let mut cluster = Cluster {
            name: opts.name.clone(),
            dir: dir.clone(),
            kubeconfig: kubeconfig.clone(),
            server: server.clone(),
            bin,
            processes: vec![],
            args: vec![],
            etcd_data: etcd_data.clone(),
            keep_dir,
        };
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cluster.spawn(
            "etcd",
            &[
                "--name=default",
                &format!("--data-dir={}", etcd_data.display()),
                &format!("--listen-client-urls={etcd_url}"),
                &format!("--advertise-client-urls={etcd_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )?;
        wait_for_tcp(etcd_port, Duration::from_secs(30)).context("etcd did not start")?;

        let p = |f: &str| pki.dir.join(f).display().to_string();
        let mut audit_args = vec![];
        if audit {
            let policy = dir.join("audit-policy.yaml");
            fs::write(&policy, AUDIT_POLICY)?;
            audit_args.push(format!("--audit-policy-file={}", policy.display()));
            audit_args.push(format!("--audit-log-path={}", dir.join("audit.log").display()));
        }
        let api_args: &[&str] = &[
            &format!("--etcd-servers={etcd_url}"),
            &format!("--cert-dir={}", dir.join("apiserver-certs").display()),
            &format!("--secure-port={api_port}"),
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--allow-privileged=true",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            &format!("--service-account-key-file={}", p("sa.pub")),
            &format!("--service-account-signing-key-file={}", p("sa.key")),
            &format!("--client-ca-file={}", p("ca.crt")),
            &format!("--tls-cert-file={}", p("apiserver.crt")),
            &format!("--tls-private-key-file={}", p("apiserver.key")),
            "--endpoint-reconciler-type=none",
            "--v=0",
        ];
        let api_args: Vec<&str> = api_args.iter().copied().chain(audit_args.iter().map(String::as_str)).collect();
        cluster.spawn("kube-apiserver", &api_args)?;
        cluster.wait_ready(Duration::from_secs(90))?;

        let kc = format!("--kubeconfig={}", kubeconfig.display());
        cluster.spawn(
            "kube-controller-manager",
            &[
                &kc,
                "--leader-elect=false",
                "--secure-port=0",
                "--controllers=*",
                &format!("--service-account-private-key-file={}", p("sa.key")),
                &format!("--root-ca-file={}", p("ca.crt")),
                "--use-service-account-credentials=false",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--horizontal-pod-autoscaler-sync-period=2s",
                "--v=0",
            ],
        )?;
        cluster.spawn("kube-scheduler", &[&kc, "--leader-elect=false", "--secure-port=0", "--v=0"])?;
        let kwok_port = free_port()?;
        let stages = kwok_stages(&dir)?;
        cluster.spawn(
            "kwok",
            &[
                &kc,
                &format!("--config={}", stages.display()),
                "--node-lease-duration-seconds=40",
                "--manage-all-nodes=true",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.0.0.1",
                &format!("--server-address=127.0.0.1:{kwok_port}"),
            ],
        )?;
        cluster.create_nodes(opts)?;
        Ok(cluster)
    }

    fn spawn(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        self.args.retain(|(n, _)| n != name);
        self.args.push((name.to_owned(), args.iter().map(|a| (*a).to_owned()).collect()));
        let log = fs::OpenOptions::new().create(true).append(true).open(self.dir.join(format!("{name}.log")))?;
        let child = Command::new(self.bin.join(name))
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name} from {}", self.bin.display()))?;
        self.processes.push((name.to_owned(), child));
        Ok(())
    }

    /// Runs kubectl against this cluster and returns its stdout.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `input` on standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(input) = input {
            child.stdin.take().context("stdin")?.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Installs a CRD with server-side apply and waits until it is Established.
    pub fn install_crd(&self, path: &Path) -> anyhow::Result<()> {
        let path = path.display().to_string();
        self.kubectl(&["apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-f", &path])?;
        let name = self.kubectl(&["get", "-f", &path, "-o", "jsonpath={.metadata.name}"])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            // Until the API server has written the first condition, kubectl's filter fails on a
            // missing list: that is "not yet", not an error.
            let established = self
                .kubectl(&[
                    "get",
                    "crd",
                    &name,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Established\")].status}",
                ])
                .unwrap_or_default();
            if established == "True" {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("CRD {name} not Established after 60s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A kubeconfig for the plain user `user` (no group beyond `system:authenticated`): it may
    /// do only what RBAC in this cluster binds to that name.
    pub fn user_kubeconfig(&self, user: &str) -> anyhow::Result<String> {
        certs::Pki::user_kubeconfig(&self.dir.join("pki"), &self.server, &self.name, user, &[])
    }

    /// Runs the toolchain's helm with its state kept in this cluster's directory; its stdout.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(self.tool("helm"))
            .args(args)
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"))
            .output()?;
        if !out.status.success() {
            bail!(
                "helm {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The path of a toolchain binary (helm, kubectl, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            for (name, child) in &mut self.processes {
                if let Some(status) = child.try_wait()? {
                    let log = fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                    let tail: Vec<_> = log.lines().rev().take(20).collect();
                    bail!("{name} exited with {status}:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
            }
            match self.kubectl(&["get", "--raw", "/readyz"]) {
                Ok(out) if out.trim() == "ok" => return Ok(()),
                Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(250)),
                Ok(out) => bail!("kube-apiserver not ready after {timeout:?}: {out}"),
                Err(err) => {
                    let log = fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default();
                    let tail: Vec<_> = log.lines().rev().take(30).collect();
                    bail!(
                        "kube-apiserver not ready after {timeout:?}: {err}\n{}",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
    }

    fn create_nodes(&self, opts: &ClusterOptions) -> anyhow::Result<()> {
        let mut docs = String::new();
        let nodes = (0..opts.nodes)
            .map(|i| (format!("node-{i}"), false))
            .chain((0..opts.spot_nodes).map(|i| (format!("spot-{i}"), true)));
        for (name, spot) in nodes {
            let lifecycle = if spot { "spot" } else { "on-demand" };
            docs.push_str(&format!(
                "---\napiVersion: v1\nkind: Node\nmetadata:\n  name: {name}\n  annotations:\n    kwok.x-k8s.io/node: fake\n  labels:\n    kubernetes.io/hostname: {name}\n    kubernetes.io/os: linux\n    kubernetes.io/arch: amd64\n    type: kwok\n    node.kubernetes.io/instance-lifecycle: {lifecycle}\nstatus:\n  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n  capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}\n"
            ));
        }
        self.kubectl_stdin(&["apply", "-f", "-"], Some(&docs))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let want = opts.nodes + opts.spot_nodes;
        loop {
            let out = self.kubectl(&[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
            ])?;
            if out.lines().filter(|l| *l == "True").count() == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kwok nodes not Ready after 60s: {out}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops every process (in reverse start order).
    pub fn stop(&mut self) {
        for (_, child) in self.processes.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.processes.clear();
    }

    /// Kills one component (e.g. `kube-apiserver`, to make the cluster unreachable).
    pub fn stop_component(&mut self, name: &str) {
        if let Some(pos) = self.processes.iter().position(|(n, _)| n == name) {
            let (_, mut child) = self.processes.remove(pos);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts a stopped component again with its original arguments, waiting for the API
    /// server to be ready when it is the API server.
    pub fn restart_component(&mut self, name: &str) -> anyhow::Result<()> {
        let args = self.args.iter().find(|(n, _)| n == name).map(|(_, a)| a.clone()).context("never started")?;
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(name, &args)?;
        if name == "kube-apiserver" {
            self.wait_ready(Duration::from_secs(90))?;
        }
        Ok(())
    }

    /// The process id of a component, for tests that kill one.
    pub fn pid_of(&self, name: &str) -> Option<u32> {
        self.processes.iter().find(|(n, _)| n == name).map(|(_, c)| c.id())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
        if !self.keep_dir && std::env::var_os("FLASHSALE_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// The kwok version the toolchain builds; its module ships the stage definitions.
pub const KWOK_VERSION: &str = "v0.8.0";

/// kwok's own "fast" stages (nodes initialize and heartbeat with a Lease; pods become ready,
/// Job pods complete, deleted pods go away), read from the kwok module in the Go module cache,
/// plus the project's extra stages from `tests/e2e/kwok-stages/`.
fn kwok_stages(dir: &Path) -> anyhow::Result<PathBuf> {
    let module = go_module_dir("sigs.k8s.io/kwok", KWOK_VERSION)?;
    let stage = module.join("kustomize/stage");
    let mut files = vec![
        stage.join("node/fast/node-initialize.yaml"),
        stage.join("node/heartbeat-with-lease/node-heartbeat-with-lease.yaml"),
        stage.join("pod/fast/pod-ready.yaml"),
        stage.join("pod/fast/pod-complete.yaml"),
        stage.join("pod/fast/pod-delete.yaml"),
    ];
    let extra = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/kwok-stages");
    if let Ok(entries) = fs::read_dir(&extra) {
        let mut extra: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        extra.sort();
        files.extend(extra);
    }
    let mut config = String::new();
    for file in files {
        let text = fs::read_to_string(&file).with_context(|| format!("reading kwok stage {}", file.display()))?;
        config.push_str("---\n");
        config.push_str(&text);
        config.push('\n');
    }
    let path = dir.join("kwok-stages.yaml");
    fs::write(&path, config)?;
    Ok(path)
}

/// Where a Go module version is extracted in the module cache, downloading it if needed.
fn go_module_dir(module: &str, version: &str) -> anyhow::Result<PathBuf> {
    let out = Command::new("go")
        .args(["mod", "download", "-json", &format!("{module}@{version}")])
        .env("GOFLAGS", "-mod=mod")
        .current_dir(std::env::temp_dir())
        .output()
        .context("running `go mod download` (is Go installed?)")?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("go mod download {module}@{version}: {}", String::from_utf8_lossy(&out.stderr)))?;
    match info.get("Dir").and_then(|d| d.as_str()) {
        Some(dir) => Ok(PathBuf::from(dir)),
        None => bail!("go mod download {module}@{version} failed: {info}"),
    }
}

fn wait_for_tcp(port: u16, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listening on 127.0.0.1:{port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}
