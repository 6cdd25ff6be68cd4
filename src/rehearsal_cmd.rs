//! `flashsale-operator rehearse NAME` and `flashsale-operator rehearsal report NAME`: start a
//! dress rehearsal of a sale and read what it measured, with the caller's own credentials (a
//! rehearsal is a FlashSale the caller creates; the operator's rights are not borrowed).

use anyhow::{Context as _, bail};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
};
use std::path::PathBuf;

use crate::{
    api::{FlashSale, Phase, RehearsedLever},
    cli::{Output, user_config},
    rehearsal,
};

#[derive(clap::Args, Debug)]
pub struct RehearseArgs {
    /// The FlashSale to rehearse.
    name: String,
    /// Its namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// When the rehearsal's Preparing starts (RFC 3339); default now.
    #[arg(long)]
    at: Option<jiff::Timestamp>,
    /// How long peak is held once reached (Go duration).
    #[arg(long, default_value = "10m")]
    hold: String,
    /// The levers taking part, comma-separated; scaling always does. Default: scale, probes,
    /// agents, warmup (degradation flags reach real users, so they take part only when named).
    #[arg(long, value_delimiter = ',', value_enum)]
    levers: Option<Vec<LeverArg>>,
    /// Print the rehearsal FlashSale instead of creating it.
    #[arg(long)]
    dry_run: bool,
    /// The kubeconfig to act through (default: KUBECONFIG, ~/.kube/config or in-cluster).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LeverArg {
    Scale,
    Probes,
    Agents,
    Warmup,
    Flags,
}

impl From<LeverArg> for RehearsedLever {
    fn from(lever: LeverArg) -> RehearsedLever {
        match lever {
            LeverArg::Scale => RehearsedLever::Scale,
            LeverArg::Probes => RehearsedLever::Probes,
            LeverArg::Agents => RehearsedLever::Agents,
            LeverArg::Warmup => RehearsedLever::Warmup,
            LeverArg::Flags => RehearsedLever::Flags,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// The rehearsed FlashSale (or the rehearsal itself).
    name: String,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
}

async fn sales(kubeconfig: Option<&std::path::Path>, namespace: Option<&str>) -> anyhow::Result<Api<FlashSale>> {
    let config = user_config(kubeconfig).await?;
    let namespace = namespace.map(str::to_owned).unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).context("cannot build a Kubernetes client")?;
    Ok(Api::namespaced(client, &namespace))
}

/// Creates the rehearsal of a sale; an earlier, finished rehearsal of it is replaced.
pub async fn rehearse(args: RehearseArgs) -> anyhow::Result<()> {
    let api = sales(args.kubeconfig.as_deref(), args.namespace.as_deref()).await?;
    let sale = api.get(&args.name).await.with_context(|| format!("cannot read FlashSale {}", args.name))?;
    let hold: kube::core::Duration = args.hold.parse().map_err(|e| anyhow::anyhow!("--hold {}: {e}", args.hold))?;
    let hold = jiff::SignedDuration::try_from(std::time::Duration::from(hold))?;
    let levers: Vec<RehearsedLever> = match &args.levers {
        Some(levers) => levers.iter().map(|l| RehearsedLever::from(*l)).collect(),
        None => rehearsal::DEFAULT_LEVERS.to_vec(),
    };
    let at = args.at.unwrap_or_else(jiff::Timestamp::now);
    let copy = rehearsal::rehearsal(&sale, at, hold, &levers).map_err(|e| anyhow::anyhow!("{e}"))?;
    if args.dry_run {
        print!("{}", serde_saphyr::to_string(&copy)?);
        return Ok(());
    }
    let name = copy.name_any();
    if let Some(earlier) = api.get_opt(&name).await? {
        let phase = earlier.status.as_ref().and_then(|s| s.phase);
        if !matches!(phase, Some(Phase::Completed)) {
            bail!(
                "rehearsal {name} of {} is still running (phase {}); wait until it is Completed or delete it",
                args.name,
                phase.map(Phase::as_str).unwrap_or("not started")
            );
        }
        // Deleting waits on the operator's finalizer, which has nothing left to restore.
        api.delete(&name, &DeleteParams::default()).await?;
        for _ in 0..60 {
            if api.get_opt(&name).await?.is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
    api.create(&PostParams::default(), &copy).await.with_context(|| format!("cannot create FlashSale {name}"))?;
    let schedule = crate::timeline::Schedule::from_spec(&copy.spec)?;
    println!(
        "rehearsal {name} of {}: Preparing at {}, peak held {} to {}, then restored",
        args.name, schedule.prepare_at, schedule.start, schedule.end
    );
    println!(
        "follow it: flashsale-operator status {name}; afterwards: flashsale-operator rehearsal report {}",
        args.name
    );
    Ok(())
}

/// Prints what the sale's rehearsal measured.
pub async fn report(args: ReportArgs) -> anyhow::Result<()> {
    let api = sales(args.kubeconfig.as_deref(), args.namespace.as_deref()).await?;
    let named = api.get_opt(&args.name).await?;
    let found = match named {
        Some(sale) if sale.spec.rehearsal.is_some() => sale,
        _ => {
            let name = rehearsal::name(&args.name);
            api.get_opt(&name).await?.with_context(|| format!("no rehearsal of {} ({name} not found)", args.name))?
        }
    };
    let report = rehearsal::report(&found).map_err(|e| anyhow::anyhow!("{e}"))?;
    args.output.print(&report, || Ok(rehearsal::render(&report)))
}
