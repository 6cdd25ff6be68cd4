//! The command line: `run`, `drain-agent`, `plan`, `status`, `crd`, `version`.

use crate::api::names;
use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kube::{Api, Client, api::ListParams};
use std::{net::SocketAddr, path::PathBuf, sync::Arc};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::{admin, api::FlashSale, controller, metrics::Metrics, plan, status_cmd};

/// Drives Kubernetes clusters through a flash sale window and puts everything back afterwards.
#[derive(Parser, Debug)]
#[command(name = "flashsale-operator", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "FLASHSALE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the controller against the cluster from the usual kubeconfig / in-cluster rules.
    Run(RunArgs),
    /// Run the spot-termination drain agent on one node.
    DrainAgent(crate::agent::Args),
    /// Print a sale's timeline and what each phase will do, without writing to any cluster.
    Plan(PlanArgs),
    /// Show each sale's phase, countdown, readiness, levers, what blocks and what to do, from
    /// its status. Reads FlashSales only.
    Status(StatusArgs),
    /// Start a dress rehearsal of a FlashSale: its preparation played for real (now, or --at),
    /// peak held for --hold, then everything restored. Writes one FlashSale, NAME-rehearsal.
    Rehearse(crate::rehearsal_cmd::RehearseArgs),
    /// What rehearsals measured.
    #[command(subcommand)]
    Rehearsal(RehearsalCommand),
    /// Print the FlashSale CustomResourceDefinition as YAML.
    Crd,
    /// Print the version.
    Version,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, default_value = "0.0.0.0:8080", env = "FLASHSALE_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// What the installer decides: agents' image and placement, allowed outbound addresses.
    #[command(flatten)]
    installer: crate::installer::Installer,
    /// Act only on FlashSales in this namespace (default: all namespaces).
    #[arg(long, env = "FLASHSALE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Elect a leader through a coordination.k8s.io Lease; only the leader acts.
    #[arg(long, env = "FLASHSALE_LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Lease duration in seconds: a crashed leader is replaced within this time.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=300))]
    lease_duration_seconds: u64,
    /// The request budget of each cluster a sale names.
    #[command(flatten)]
    budget: crate::client::Budget,
    /// How many sales are reconciled at once, at most (the others wait their turn, in order).
    #[arg(long, env = "FLASHSALE_MAX_CONCURRENT_RECONCILES", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..))]
    max_concurrent_reconciles: u16,
}

impl RunArgs {
    fn options(&self) -> controller::Options {
        controller::Options { budget: self.budget, concurrency: self.max_concurrent_reconciles }
    }
}

/// How a command prints its answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum Output {
    /// For people.
    #[default]
    Text,
    /// A stable JSON document.
    Json,
    /// The same document as YAML.
    Yaml,
}

impl Output {
    /// `doc` as JSON or YAML, or `text()` for text.
    pub(crate) fn print<T: serde::Serialize>(
        self,
        doc: &T,
        text: impl FnOnce() -> anyhow::Result<String>,
    ) -> anyhow::Result<()> {
        let out = match self {
            Output::Text => text()?,
            Output::Json => serde_json::to_string_pretty(doc)? + "\n",
            Output::Yaml => serde_saphyr::to_string(doc)?,
        };
        print!("{out}");
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
enum RehearsalCommand {
    /// Time-to-peak per cluster and workload, and whether prepareBefore covers it.
    Report(crate::rehearsal_cmd::ReportArgs),
}

#[derive(clap::Args, Debug)]
struct StatusArgs {
    /// One sale (default: every sale in the namespace).
    name: Option<String>,
    /// The sales' namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with_all = ["namespace", "name"])]
    all_namespaces: bool,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    /// The kubeconfig to read through (default: KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct PlanArgs {
    /// The FlashSale YAML file (`-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The instant to plan from (RFC 3339); default now.
    #[arg(long)]
    now: Option<jiff::Timestamp>,
    /// Read live workloads (and the sale's kubeconfig Secrets) through this kubeconfig to show
    /// baselines. Nothing is written. This kubeconfig is the reviewer's own and may use exec
    /// plugins; the sale's kubeconfig Secrets get the operator's rules (no exec, token files or
    /// paths), since the sale's author wrote them.
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
}

impl Cli {
    /// Parses the command line and runs the chosen command.
    pub fn parse_and_run() -> anyhow::Result<()> {
        let cli = Cli::parse();
        cli.init_logging();
        match cli.command {
            Command::Run(args) => runtime()?.block_on(run(args)),
            Command::DrainAgent(args) => agent_runtime()?.block_on(drain_agent(args)),
            Command::Plan(args) => {
                let sale = plan::read(&args.file)?;
                let now = args.now.unwrap_or_else(jiff::Timestamp::now);
                let live = match &args.kubeconfig {
                    Some(path) => runtime()?.block_on(async {
                        let kubeconfig = kube::config::Kubeconfig::read_from(path)
                            .with_context(|| format!("cannot read {}", path.display()))?;
                        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
                        anyhow::Ok(plan::read_live(&sale, Client::try_from(config)?).await)
                    })?,
                    None => vec![],
                };
                let built = plan::build(&sale, now, &live)?;
                args.output.print(&built, || Ok(plan::render_text(&built)?))
            }
            Command::Status(args) => {
                let sales = runtime()?.block_on(read_sales(&args))?;
                let doc = status_cmd::report(&sales, jiff::Timestamp::now());
                args.output.print(&doc, || Ok(status_cmd::render(&doc)))
            }
            Command::Rehearse(args) => runtime()?.block_on(crate::rehearsal_cmd::rehearse(args)),
            Command::Rehearsal(RehearsalCommand::Report(args)) => {
                runtime()?.block_on(crate::rehearsal_cmd::report(args))
            }
            Command::Crd => {
                print!("{}", crate::api::crd_yaml()?);
                Ok(())
            }
            Command::Version => {
                println!("flashsale-operator {}", env!("CARGO_PKG_VERSION"));
                Ok(())
            }
        }
    }

    fn init_logging(&self) {
        init_logging(self.log_format);
    }
}

/// The drain agent on its own: the `flashsale-drain-agent` binary that the agent DaemonSet runs.
/// It is the same code and command line as `flashsale-operator drain-agent`, linked without the
/// controller, so the process on every spot node is smaller.
#[derive(Parser, Debug)]
#[command(name = "flashsale-drain-agent", version, about = "Drains a spot node when the cloud announces its reclaim")]
pub struct AgentCli {
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "FLASHSALE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(flatten)]
    args: crate::agent::Args,
}

impl AgentCli {
    /// Parses the command line and runs the agent until SIGTERM.
    pub fn parse_and_run() -> anyhow::Result<()> {
        let cli = AgentCli::parse();
        init_logging(cli.log_format);
        agent_runtime()?.block_on(drain_agent(cli.args))
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The exit code for a command's outcome, printing an error's causes once each (kube's errors
/// already include their sources in Display).
pub fn exit_code(result: anyhow::Result<()>) -> std::process::ExitCode {
    let Err(err) = result else { return std::process::ExitCode::SUCCESS };
    let mut message = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if !message.contains(&text) {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&text);
        }
    }
    eprintln!("error: {message}");
    std::process::ExitCode::FAILURE
}

/// The sales `status` shows, read through the caller's kubeconfig.
async fn read_sales(args: &StatusArgs) -> anyhow::Result<Vec<status_cmd::Read>> {
    let config = user_config(args.kubeconfig.as_deref()).await?;
    let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
    let scope = match (&args.name, args.all_namespaces) {
        (_, true) => status_cmd::Scope::All,
        (Some(name), false) => status_cmd::Scope::One { namespace, name: name.clone() },
        (None, false) => status_cmd::Scope::Namespace(namespace),
    };
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    Ok(status_cmd::read(client, &scope).await?)
}

/// The caller's own credentials: `kubeconfig`, else KUBECONFIG, ~/.kube/config or in-cluster.
pub(crate) async fn user_config(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Config> {
    Ok(match kubeconfig {
        Some(path) => {
            let kubeconfig =
                kube::config::Kubeconfig::read_from(path).with_context(|| format!("cannot read {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?
        }
        None => kube::Config::infer()
            .await
            .context("cannot find Kubernetes credentials (KUBECONFIG, ~/.kube/config or in-cluster service account)")?,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// The drain agent runs on every spot node: one thread is plenty and keeps it small.
fn agent_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn drain_agent(args: crate::agent::Args) -> anyhow::Result<()> {
    let mut config = kube::Config::infer()
        .await
        .context("cannot find Kubernetes credentials (KUBECONFIG, ~/.kube/config or in-cluster service account)")?;
    // The client's own retry of 429 would hide a PodDisruptionBudget's refusal and wait on its
    // own schedule; the drain retries with a backoff that knows the deadline.
    config.default_retry = false;
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    crate::agent::run(args, client, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let config = kube::Config::infer()
        .await
        .context("cannot find Kubernetes credentials (KUBECONFIG, ~/.kube/config or in-cluster service account)")?;
    let client = crate::client::counted(config, metrics.clone(), crate::clusters::LOCAL, None)
        .context("cannot build a Kubernetes client")?;
    ensure_crd_installed(&client, args.watch_namespace.as_deref()).await?;

    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_state = admin::Admin { metrics: metrics.clone(), ready: ready_rx };
    let server = tokio::spawn(admin::serve(args.metrics_addr, admin_state, stopped(stop_rx.clone())));
    let stop_tx = Arc::new(stop_tx);
    let signal = {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
        })
    };

    let outcome = if args.leader_elect {
        run_as_elected(client, metrics, ready_tx, stop_rx.clone(), &args).await
    } else {
        // Without election this process is the only one acting.
        metrics.leader.set(1);
        controller::run(
            client,
            args.watch_namespace.clone(),
            metrics,
            args.installer.clone(),
            args.options(),
            ready_tx,
            stopped(stop_rx.clone()),
        )
        .await;
        Ok(())
    };
    signal.abort();
    // Stops the metrics server too when the controller ended for another reason.
    let _ = stop_tx.send(true);
    server.await.context("metrics server task")?.context("metrics server")?;
    outcome?;
    tracing::info!("stopped");
    Ok(())
}

/// Waits for leadership, runs the controller while leading, and exits when leadership is lost
/// (the process manager restarts it as a standby), so two leaders never act at once.
async fn run_as_elected(
    client: Client,
    metrics: Arc<Metrics>,
    ready: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
    args: &RunArgs,
) -> anyhow::Result<()> {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("{}-{}", hostname(), std::process::id()));
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "flashsale-operator")
        .with_namespace(&args.leader_election_namespace)
        .with_identity(&identity)
        .with_duration(args.lease_duration_seconds)
        .with_grace((args.lease_duration_seconds / 3).max(1))
        .with_field_manager(names::FIELD_MANAGER)
        .build()
        .await
        .context("cannot set up leader election")?;
    let (mut leader, lease) = manager.watch().await;
    tracing::info!(%identity, namespace = %args.leader_election_namespace, "waiting to become the leader");
    // A standby is healthy and ready; it just does not act.
    let _ = ready.send(true);
    let became_leader = tokio::select! {
        became = leader.wait_for(|is| *is) => { became.is_ok() }
        _ = stop.wait_for(|s| *s) => false,
    };
    if !became_leader {
        drop(leader);
        let _ = lease.await;
        return if *stop.borrow() { Ok(()) } else { Err(anyhow::anyhow!("leader election stopped")) };
    }
    tracing::info!(%identity, "became the leader");
    metrics.leader.set(1);
    let _ = ready.send(false);
    let mut lost = leader.clone();
    let mut stop_for_controller = stop.clone();
    let shutdown = async move {
        tokio::select! {
            _ = lost.wait_for(|is| !*is) => {}
            _ = stop_for_controller.wait_for(|s| *s) => {}
        }
    };
    controller::run(
        client,
        args.watch_namespace.clone(),
        metrics.clone(),
        args.installer.clone(),
        args.options(),
        ready,
        shutdown,
    )
    .await;
    metrics.leader.set(0);
    let still_leader = *leader.borrow();
    let stopping = *stop.borrow();
    // Closing the channel releases the Lease, so a standby takes over at once.
    drop(leader);
    let _ = lease.await;
    if still_leader || stopping {
        Ok(())
    } else {
        anyhow::bail!("lost the leader Lease; exiting so that only one replica acts")
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "flashsale-operator".to_owned())
}

/// Refuses to start where the CRD is missing, saying how to install it.
async fn ensure_crd_installed(client: &Client, namespace: Option<&str>) -> anyhow::Result<()> {
    let sales: Api<FlashSale> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    match sales.list_metadata(&ListParams::default().limit(1)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => bail!(
            "the FlashSale CRD (flashsales.flashsale.dev) is not installed in this cluster; install it with \
             `flashsale-operator crd | kubectl apply --server-side -f -` or the Helm chart"
        ),
        Err(err) => Err(err).context("cannot list FlashSales"),
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DaemonSet the operator deploys must start the agent it ships: its command and
    /// arguments parse as the agent's command line (and as `flashsale-operator drain-agent`),
    /// with the node from the environment the pod spec sets.
    #[test]
    fn the_agent_daemonset_starts_a_valid_drain_agent() {
        let mut drain: crate::api::SpotDrain = serde_json::from_value(serde_json::json!({
            "metadataToken": "Required",
            "pollInterval": "3s",
            "metadataEndpoint": "http://169.254.169.254",
        }))
        .unwrap();
        drain.node_selector.insert("pool".into(), "spot".into());
        let installer = crate::installer::Installer::defaults();
        let ds = crate::levers::agents::daemonset("flashsale-drain-agent-x", &drain, &installer, "shop/sale");
        let container = &ds["spec"]["template"]["spec"]["containers"][0];
        let strings = |v: &serde_json::Value| -> Vec<String> {
            v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
        };
        let mut argv = strings(&container["command"]);
        assert_eq!(argv, ["flashsale-drain-agent"], "the binary Cargo.toml builds for the agent");
        argv.extend(strings(&container["args"]));
        argv.push("--node-name=spot-0".into());
        let agent = AgentCli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let rendered = format!("{:?}", agent.args);
        for want in ["169.254.169.254", "3s", "Required", "9102", "spot-0"] {
            assert!(rendered.contains(want), "{want} missing from {rendered}");
        }
        let mut subcommand = vec!["flashsale-operator".to_owned(), "drain-agent".to_owned()];
        subcommand.extend(argv.into_iter().skip(1));
        let cli = Cli::try_parse_from(&subcommand).unwrap_or_else(|e| panic!("{subcommand:?}: {e}"));
        let Command::DrainAgent(args) = cli.command else { panic!("not the drain agent: {subcommand:?}") };
        assert_eq!(format!("{args:?}"), rendered, "the subcommand and the agent binary read the same flags");
        let env: Vec<&str> = container["env"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(env, ["NODE_NAME", "FLASHSALE_SALE"]);
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    }
}
