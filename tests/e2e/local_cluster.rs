//! `make cluster-up`: one local control plane (the same one the end-to-end tests use), with the
//! FlashSale CRD installed, kept running until SIGTERM or Ctrl-C.
//!
//! Usage: `cargo run --example local-cluster -- DIR [--no-crd]` writes `DIR/kubeconfig`.

#[path = "harness/mod.rs"]
mod harness;

use anyhow::Context as _;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".e2e".into()));
    std::fs::create_dir_all(&dir)?;
    let dir = dir.canonicalize()?;
    let opts = harness::ClusterOptions { name: "flashsale-local".into(), ..Default::default() };
    let cluster = harness::Cluster::start(&opts, &dir.join("cluster"), true)?;
    if !std::env::args().any(|a| a == "--no-crd") {
        cluster.install_crd(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/crds/flashsale.dev_flashsales.yaml"
        )))?;
    }
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(&cluster.kubeconfig, &kubeconfig).context("writing the kubeconfig")?;
    let kubectl = dir.join("kubectl");
    let _ = std::fs::remove_file(&kubectl);
    std::os::unix::fs::symlink(cluster.tool("kubectl"), &kubectl)?;
    println!("cluster up: {} (kubeconfig {})", cluster.server, kubeconfig.display());
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {},
            _ = tokio::signal::ctrl_c() => {},
        }
        anyhow::Ok(())
    })?;
    drop(cluster);
    let _ = std::fs::remove_file(kubeconfig);
    println!("cluster down");
    Ok(())
}
