//! Shared state and helpers of the end-to-end tests.

use anyhow::{Context as _, bail};
use kube::{
    Client, Config,
    api::{Api, DynamicObject, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
    discovery::ApiResource,
};
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use crate::harness::{Cluster, ClusterOptions};

/// The clusters of this run, started on first use.
pub struct Env {
    primary: OnceLock<Result<Cluster, String>>,
    secondary: OnceLock<Result<Cluster, String>>,
    crd: Mutex<bool>,
    root: PathBuf,
}

impl Env {
    pub fn new() -> Env {
        let root = std::env::temp_dir().join(format!("flashsale-e2e-{}", std::process::id()));
        Env { primary: OnceLock::new(), secondary: OnceLock::new(), crd: Mutex::new(false), root }
    }

    fn start<'a>(
        &'a self,
        cell: &'a OnceLock<Result<Cluster, String>>,
        opts: ClusterOptions,
    ) -> anyhow::Result<&'a Cluster> {
        let dir = self.root.join(&opts.name);
        cell.get_or_init(|| Cluster::start(&opts, &dir, false).map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow::anyhow!("cluster {} failed to start: {e}", opts.name))
    }

    /// The shared cluster, with the FlashSale CRD installed.
    pub fn primary(&self) -> anyhow::Result<&Cluster> {
        let cluster = self.start(&self.primary, ClusterOptions { name: "primary".into(), ..Default::default() })?;
        let mut installed = self.crd.lock().map_err(|_| anyhow::anyhow!("CRD lock poisoned"))?;
        if !*installed {
            install_crd(cluster)?;
            *installed = true;
        }
        Ok(cluster)
    }

    /// A second, independent cluster, without the FlashSale CRD.
    pub fn secondary(&self) -> anyhow::Result<&Cluster> {
        self.start(&self.secondary, ClusterOptions { name: "secondary".into(), nodes: 2, spot_nodes: 1 })
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Dropping the clusters kills their processes; then the scratch root goes.
        drop(self.primary.take());
        drop(self.secondary.take());
        if std::env::var_os("FLASHSALE_E2E_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn install_crd(cluster: &Cluster) -> anyhow::Result<()> {
    cluster.install_crd(&repo().join("crds/flashsale.dev_flashsales.yaml"))
}

/// The agent namespace the operator uses in these tests (no `POD_NAMESPACE`: its default).
pub const AGENT_NAMESPACE: &str = "flashsale-system";

/// Installs the drain agents' identity and rights into `namespace` of `cluster` exactly as the
/// chart renders them (`templates/agent-rbac.yaml`), as the installer does before any sale
/// runs agents there. Idempotent; serialised, since tests share the clusters.
pub fn install_agent_rbac(cluster: &Cluster, namespace: &str) -> anyhow::Result<()> {
    static APPLYING: Mutex<()> = Mutex::new(());
    let _one = APPLYING.lock().unwrap_or_else(|e| e.into_inner());
    let rendered = render_chart(cluster, "flashsale", namespace, &[], &["templates/agent-rbac.yaml"])?;
    apply_manifests(
        cluster,
        &format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---\n{rendered}"),
    )
}

/// A kubeconfig of `cluster` whose only credential is a token of the agents' ServiceAccount
/// bound to a pod on `node` (a DaemonSet's, as the agents' own pods are, so a drain leaves it
/// alone): an agent run with it has exactly the rights the chart's agent RBAC gives, under the
/// own-node admission policy.
pub fn agent_kubeconfig(cluster: &Cluster, node: &str) -> anyhow::Result<PathBuf> {
    install_agent_rbac(cluster, AGENT_NAMESPACE)?;
    let agent = flashsale_operator::levers::agents::AGENT;
    let name = format!("agent-identity-{node}");
    let ds = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": AGENT_NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {
                    "serviceAccountName": agent,
                    "nodeSelector": {"kubernetes.io/hostname": node},
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "identity", "image": "e2e.local/identity:1"}],
                },
            },
        },
    });
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&ds.to_string()))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let pod = loop {
        let running = cluster.kubectl(&[
            "get",
            "pods",
            "-n",
            AGENT_NAMESPACE,
            "-l",
            &format!("app={name}"),
            "--field-selector=status.phase=Running",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?;
        if let Some(pod) = running.split_whitespace().next() {
            break pod.to_owned();
        }
        if Instant::now() > deadline {
            bail!("the agent identity pod never ran on {node}");
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let token = cluster.kubectl(&[
        "create",
        "token",
        agent,
        "-n",
        AGENT_NAMESPACE,
        "--bound-object-kind=Pod",
        &format!("--bound-object-name={pod}"),
        "--duration=2h",
    ])?;
    let path = cluster.dir.join(format!("agent-{node}.kubeconfig"));
    std::fs::copy(&cluster.kubeconfig, &path)?;
    let kubectl = |args: &[&str]| -> anyhow::Result<()> {
        let out = Command::new(cluster.tool("kubectl"))
            .arg(format!("--kubeconfig={}", path.display()))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    };
    kubectl(&["config", "set-credentials", "drain-agent", &format!("--token={}", token.trim())])?;
    kubectl(&["config", "set-context", "--current", "--user=drain-agent"])?;
    Ok(path)
}

/// Runs an async test body on its own runtime (kube clients are bound to the runtime that
/// made them).
pub fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    block_on_value(f)
}

/// [`block_on`] for bodies that return a value.
pub fn block_on_value<T, F: std::future::Future<Output = anyhow::Result<T>>>(f: F) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?.block_on(f)
}

/// A client for `cluster`.
pub async fn client(cluster: &Cluster) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// Creates a fresh namespace named after the test and waits for its default ServiceAccount.
pub async fn namespace(client: &Client, name: &str) -> anyhow::Result<String> {
    namespace_named(client, &format!("{name}-{}", std::process::id() % 100_000)).await
}

/// Creates the namespace `ns_name` and waits for its default ServiceAccount.
pub async fn namespace_named(client: &Client, ns_name: &str) -> anyhow::Result<String> {
    use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
    let ns_name = ns_name.to_owned();
    let ns: Namespace = serde_json::from_value(serde_json::json!({"metadata": {"name": ns_name}}))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns_name);
    eventually(Duration::from_secs(30), || async { Ok(sas.get_opt("default").await?.is_some()) })
        .await
        .context("default ServiceAccount never appeared")?;
    Ok(ns_name)
}

/// Polls `check` every 100 ms until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            return match last_err {
                Some(e) => Err(e.context(format!("condition not met within {timeout:?}"))),
                None => bail!("condition not met within {timeout:?}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads a YAML file with one document into a dynamic object.
pub fn read_object(path: &Path) -> anyhow::Result<DynamicObject> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value =
        serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    Ok(serde_json::from_value(value)?)
}

/// Installs the FlashSale CRD on `cluster` as `edit` leaves it (the CRD of another version: a
/// wider schema, no CEL rules), for a cluster of a test's own: the CRD is cluster-wide.
pub fn install_edited_crd(cluster: &Cluster, edit: impl FnOnce(&mut serde_json::Value)) -> anyhow::Result<()> {
    let mut crd: serde_json::Value =
        serde_saphyr::from_str(&std::fs::read_to_string(repo().join("crds/flashsale.dev_flashsales.yaml"))?)?;
    edit(&mut crd);
    let path = cluster.dir.join("crd-edited.json");
    std::fs::write(&path, serde_json::to_string(&crd)?)?;
    cluster.install_crd(&path)
}

/// The FlashSale API resource, for dynamic requests that should not go through our own types.
pub fn flashsale_resource() -> ApiResource {
    ApiResource {
        group: "flashsale.dev".into(),
        version: "v1alpha1".into(),
        api_version: "flashsale.dev/v1alpha1".into(),
        kind: "FlashSale".into(),
        plural: "flashsales".into(),
    }
}

/// Applies `obj` with server-side apply (optionally as a dry run) as the test's field manager.
pub async fn apply(api: &Api<DynamicObject>, obj: &DynamicObject, dry_run: bool) -> Result<DynamicObject, kube::Error> {
    let mut params = PatchParams::apply("e2e").force();
    params.dry_run = dry_run;
    let name = obj.metadata.name.clone().unwrap_or_default();
    api.patch(&name, &params, &Patch::Apply(obj)).await
}

/// A process of this project's binaries (`flashsale-operator run`, `flashsale-drain-agent`) run
/// against a test cluster with its log in the cluster's directory and its `/metrics`,
/// `/healthz` and `/readyz` on a free loopback port; killed on drop.
pub struct Process {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
    what: &'static str,
}

/// The operator (`flashsale-operator run`).
pub type Operator = Process;
/// The drain agent (`flashsale-drain-agent`, the binary the agent DaemonSet runs).
pub type Agent = Process;

impl Process {
    fn spawn(
        cluster: &Cluster,
        what: &'static str,
        program: &str,
        args: &[&str],
        rust_log: &str,
        kubeconfig: &Path,
    ) -> anyhow::Result<Process> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = cluster.dir.join(format!("{what}-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(program)
            .args(args)
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Process { child, port, log, what })
    }

    /// Starts `flashsale-operator run` against `cluster`, with debug logs of its own.
    pub fn operator(cluster: &Cluster, extra: &[&str]) -> anyhow::Result<Process> {
        Self::operator_logging(cluster, extra, "info,flashsale_operator=debug")
    }

    /// [`Process::operator`] with the given `RUST_LOG` (benchmarks log less).
    pub fn operator_logging(cluster: &Cluster, extra: &[&str], rust_log: &str) -> anyhow::Result<Process> {
        let args: Vec<&str> = std::iter::once("run").chain(extra.iter().copied()).collect();
        Self::spawn(cluster, "operator", &operator_program(), &args, rust_log, &cluster.kubeconfig)
    }

    /// Starts the drain agent for `node`, polling the metadata service at `endpoint`, with the
    /// identity the agents get in a cluster ([`agent_kubeconfig`]).
    pub fn agent(cluster: &Cluster, node: &str, endpoint: &str, extra: &[&str]) -> anyhow::Result<Process> {
        let kubeconfig = agent_kubeconfig(cluster, node)?;
        let mut args = vec!["--node-name", node, "--metadata-endpoint", endpoint];
        args.extend(extra);
        let program = env!("CARGO_BIN_EXE_flashsale-drain-agent");
        Self::spawn(cluster, "agent", program, &args, "info,flashsale_operator=debug", &kubeconfig)
    }

    /// GET `path` on the metrics address: status code and body.
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.port, path)
    }

    /// Waits until `/readyz` answers 200, failing at once if the process exits.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !matches!(self.get("/readyz"), Ok((200, _))) {
            self.ensure_alive()?;
            if Instant::now() > deadline {
                bail!("{} not ready after {timeout:?}; log:\n{}", self.what, self.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Fails (with the log) if the process has exited.
    pub fn ensure_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the {} exited with {status}; log:\n{}", self.what, self.log_text());
        }
        Ok(())
    }

    /// The value of one series on /metrics (0 when absent), e.g.
    /// `flashsale_drain_agent_evictions_total{outcome="evicted"}`.
    pub fn metric(&self, series: &str) -> anyhow::Result<f64> {
        let (code, body) = self.get("/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(body
            .lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0))
    }

    /// VmRSS, VmHWM, RssAnon and RssFile of the process, in kB (for the benchmarks).
    #[allow(dead_code)]
    pub fn memory(&self) -> anyhow::Result<(u64, u64, u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .with_context(|| format!("no {name} in /proc/<pid>/status"))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?, field("RssAnon:")?, field("RssFile:")?))
    }

    /// Kills the process outright (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Asks the process to stop (SIGTERM).
    pub fn terminate(&self) -> anyhow::Result<()> {
        let status = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still running after {timeout:?}; log:\n{}", self.what, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET on loopback.
pub fn http_get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response.split_whitespace().nth(1).and_then(|c| c.parse().ok()).context("malformed HTTP response")?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((code, body))
}

/// An RFC 3339 instant `offset_secs` from now, whole seconds.
pub fn at(offset_secs: i64) -> String {
    let t = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(offset_secs);
    t.round(jiff::Unit::Second).map(|t| t.to_string()).unwrap_or_default()
}

/// The (reason, note) of every Event about the object `name` in `ns`, oldest first.
pub async fn events(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<(String, String)>> {
    use k8s_openapi::api::events::v1::Event;
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Event> = api
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect();
    list.sort_by_key(|e| e.event_time.clone().map(|t| t.0).or(e.metadata.creation_timestamp.clone().map(|t| t.0)));
    Ok(list.into_iter().map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default())).collect())
}

/// The notes of every Event about `name`, oldest first.
pub async fn event_notes(client: &Client, ns: &str, name: &str) -> anyhow::Result<Vec<String>> {
    Ok(events(client, ns, name).await?.into_iter().map(|(_, note)| note).collect())
}

/// A FlashSale with the given window, lead times and `spec.workloads`.
pub fn flash_sale(
    name: &str,
    ns: &str,
    (start, end): (&str, &str),
    (prepare_before, cooldown_after): (&str, &str),
    workloads: serde_json::Value,
) -> anyhow::Result<flashsale_operator::api::FlashSale> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "window": {"start": start, "end": end},
            "prepareBefore": prepare_before,
            "cooldownAfter": cooldown_after,
            "workloads": workloads,
        }
    }))?)
}

/// A Secret `name` in `ns` holding `value` under `key` (a kubeconfig for `spec.clusters`).
pub async fn kubeconfig_secret(client: &Client, ns: &str, name: &str, key: &str, value: &str) -> anyhow::Result<()> {
    use k8s_openapi::api::core::v1::Secret;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "stringData": {key: value},
    }))?;
    secrets.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// A Deployment `name` of `replicas` pods with one container (requesting `cpu`, if given).
pub fn deployment(
    name: &str,
    replicas: i32,
    cpu: Option<&str>,
) -> anyhow::Result<k8s_openapi::api::apps::v1::Deployment> {
    let mut container = serde_json::json!({"name": "app", "image": "registry.example/app:1"});
    if let Some(cpu) = cpu {
        container["resources"] = serde_json::json!({"requests": {"cpu": cpu}});
    }
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [container]}},
        }
    }))?)
}

/// Whether the pod's Ready condition is True.
pub fn is_ready(p: &k8s_openapi::api::core::v1::Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node the pod is bound to ("" while unscheduled).
pub fn node_of(p: &k8s_openapi::api::core::v1::Pod) -> &str {
    p.spec.as_ref().and_then(|s| s.node_name.as_deref()).unwrap_or("")
}

/// The `main` of a benchmark: runs `run` only under `cargo bench` (`cargo test --all-targets`
/// runs bench binaries without `--bench`), prints the total time, exits 1 on failure.
#[allow(dead_code)]
pub fn bench_main(name: &str, run: impl FnOnce() -> anyhow::Result<()>) {
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name} benchmark: run it with `cargo bench --bench {name}`");
        return;
    }
    let started = Instant::now();
    match run() {
        Ok(()) => println!("\ntotal run time: {:.0} s", started.elapsed().as_secs_f64()),
        Err(err) => {
            eprintln!("benchmark failed after {:.0} s: {err:#}", started.elapsed().as_secs_f64());
            std::process::exit(1);
        }
    }
}

/// The operator binary the tests and benchmarks run: this build's, or the one
/// `FLASHSALE_BENCH_OPERATOR` names (a benchmark comparing an older commit's build).
pub fn operator_program() -> String {
    std::env::var("FLASHSALE_BENCH_OPERATOR").unwrap_or_else(|_| env!("CARGO_BIN_EXE_flashsale-operator").to_owned())
}

/// The machine's CPU count and load average, for benchmark reports.
#[allow(dead_code)]
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{cpus} CPUs, load average {load}")
}

/// Renders the chart (`helm template`) as release `release` in `namespace` with `--set` values
/// `sets`, keeping only the templates in `only` (all when empty).
pub fn render_chart(
    cluster: &Cluster,
    release: &str,
    namespace: &str,
    sets: &[&str],
    only: &[&str],
) -> anyhow::Result<String> {
    let chart = repo().join("charts/flashsale-operator").display().to_string();
    let mut args = vec!["template", release, chart.as_str(), "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set]);
    }
    for template in only {
        args.extend(["--show-only", template]);
    }
    cluster.helm(&args)
}

/// Applies rendered manifests to `cluster` (server-side, as the tests' field manager).
pub fn apply_manifests(cluster: &Cluster, manifests: &str) -> anyhow::Result<()> {
    cluster
        .kubectl_stdin(
            &["apply", "--server-side", "--force-conflicts", "--field-manager=e2e", "-f", "-"],
            Some(manifests),
        )
        .map(drop)
}

/// The operator's identity in a remote cluster as an installer sets it up: a plain user (a
/// client certificate, no groups) holding only what the chart's `mode: remote` grants it for
/// sales in `namespaces`. Applies that rendering to `cluster` and returns the user's name and
/// a kubeconfig for it, to put in a sale's kubeconfig Secret instead of the admin's.
pub fn remote_identity(cluster: &Cluster, namespaces: &[&str]) -> anyhow::Result<(String, String)> {
    let first = namespaces.first().context("a remote identity needs a namespace")?;
    let user = format!("flashsale-remote-{first}");
    let release = format!("remote-{first}");
    let subject_kind = "remote.subjects[0].kind=User".to_owned();
    let subject_name = format!("remote.subjects[0].name={user}");
    let listed = format!("remote.namespaces={{{}}}", namespaces.join(","));
    let sets = ["mode=remote", subject_kind.as_str(), subject_name.as_str(), listed.as_str()];
    let rendered = render_chart(cluster, &release, AGENT_NAMESPACE, &sets, &[])?;
    apply_manifests(cluster, &rendered).context("applying the chart's mode remote")?;
    let kubeconfig = cluster.user_kubeconfig(&user)?;
    Ok((user, kubeconfig))
}

impl Process {
    /// Starts `flashsale-operator` as a pod of its Deployment would run it: the container's
    /// `args` (after `run`) and exactly its environment, with `kubeconfig` standing in for the
    /// pod's mounted identity. Only the metrics address moves to a free loopback port, so two
    /// revisions' pods can run side by side as a rolling update overlaps them.
    pub fn operator_as_pod(
        cluster: &Cluster,
        args: &[&str],
        env: &[(String, String)],
        kubeconfig: &Path,
    ) -> anyhow::Result<Process> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log = cluster.dir.join(format!("operator-{port}.log"));
        let file = std::fs::File::create(&log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
            .arg("run")
            .args(args.iter().filter(|a| !a.starts_with("--metrics-addr")))
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("KUBECONFIG", kubeconfig)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        Ok(Process { child, port, log, what: "operator" })
    }
}

/// The (status, reason, message) of a sale's condition `type_`.
pub fn condition(sale: &flashsale_operator::api::FlashSale, type_: &str) -> Option<(String, String, String)> {
    let c = sale.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits up to `secs` until the sale `name` is in phase `want`.
pub async fn wait_phase(
    sales: &Api<flashsale_operator::api::FlashSale>,
    name: &str,
    want: flashsale_operator::api::Phase,
    secs: u64,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    eventually(Duration::from_secs(secs), || async {
        Ok(sales.get(name).await?.status.and_then(|s| s.phase) == Some(want))
    })
    .await
    .with_context(|| format!("{name} never reached {want}"))
}

/// A Deployment as its owner wrote it: no server-managed fields, no status, no revision.
pub fn as_written(d: &k8s_openapi::api::apps::v1::Deployment) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(d)?;
    if let Some(meta) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        for field in ["managedFields", "resourceVersion", "generation", "uid", "creationTimestamp"] {
            meta.remove(field);
        }
        if let Some(annotations) = meta.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            annotations.remove("deployment.kubernetes.io/revision");
        }
    }
    if let Some(obj) = v.as_object_mut() {
        obj.remove("status");
    }
    Ok(v)
}
