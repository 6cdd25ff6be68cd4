//! The command line: `run`, `drain-agent`, `plan`, `crd`, `version`.

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kube::{Api, Client, api::ListParams};
use std::{net::SocketAddr, path::PathBuf, sync::Arc};
use tokio::sync::watch;
use tracing_subscriber::EnvFilter;

use crate::{admin, api::FlashSale, controller, metrics::Metrics, plan};

/// Drives Kubernetes clusters through a flash sale window and puts everything back afterwards.
#[derive(Parser, Debug)]
#[command(name = "flashsale-operator", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "FLASHSALE_LOG_FORMAT"
    )]
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
    DrainAgent,
    /// Print a sale's timeline and what each phase will do, without writing to any cluster.
    Plan(PlanArgs),
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
}

#[derive(clap::Args, Debug)]
struct PlanArgs {
    /// The FlashSale YAML file (`-` for standard input).
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// The instant to plan from (RFC 3339); default now.
    #[arg(long)]
    now: Option<jiff::Timestamp>,
}

impl Cli {
    /// Parses the command line and runs the chosen command.
    pub fn parse_and_run() -> anyhow::Result<()> {
        let cli = Cli::parse();
        cli.init_logging();
        match cli.command {
            Command::Run(args) => runtime()?.block_on(run(args)),
            Command::DrainAgent => bail!(
                "drain-agent is not implemented in this version of flashsale-operator; spotDrain sales cannot be served by it yet"
            ),
            Command::Plan(args) => {
                let sale = plan::read(&args.file)?;
                let now = args.now.unwrap_or_else(jiff::Timestamp::now);
                print!("{}", plan::render(&sale, now)?);
                Ok(())
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
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let client = Client::try_default()
        .await
        .context("cannot build a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster service account)")?;
    ensure_crd_installed(&client).await?;

    let metrics = Arc::new(Metrics::default());
    let (ready_tx, ready_rx) = watch::channel(false);
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_state = admin::Admin {
        metrics: metrics.clone(),
        ready: ready_rx,
    };
    let server = tokio::spawn(admin::serve(
        args.metrics_addr,
        admin_state,
        stopped(stop_rx.clone()),
    ));
    let controller = tokio::spawn(controller::run(client, metrics, ready_tx, stopped(stop_rx)));

    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    controller.await.context("controller task")?;
    server.await.context("metrics server task")??;
    tracing::info!("stopped");
    Ok(())
}

/// Refuses to start where the CRD is missing, saying how to install it.
async fn ensure_crd_installed(client: &Client) -> anyhow::Result<()> {
    let sales: Api<FlashSale> = Api::all(client.clone());
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
