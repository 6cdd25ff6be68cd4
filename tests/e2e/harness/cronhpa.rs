//! Alibaba's kubernetes-cronhpa-controller (v1.3.0, built from Go modules by
//! `tests/e2e/toolchain/cronhpa/build.sh` and cached) running against a [`Cluster`].
//!
//! The controller takes no flags: it reads `KUBECONFIG` and runs its cron engine in `TZ`. It
//! watches every namespace, so run at most one per cluster.

use anyhow::{Context as _, bail};
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::Cluster;

/// The controller's executable name in the bin directory build.sh prints.
pub const BINARY: &str = "kubernetes-cronhpa-controller";

/// The CronHPA CRD the tests install (v1, no status subresource, like upstream).
pub fn crd_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/toolchain/cronhpa/crd.yaml")
}

/// The controller binary, building it on first use (once per process).
/// `FLASHSALE_CRONHPA_BIN` may name a prebuilt bin directory instead.
pub fn binary() -> anyhow::Result<PathBuf> {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    if let Some(bin) = BIN.get() {
        return Ok(bin.clone());
    }
    let dir = match std::env::var("FLASHSALE_CRONHPA_BIN") {
        Ok(dir) => PathBuf::from(dir),
        Err(_) => super::built("tests/e2e/toolchain/cronhpa/build.sh")?,
    };
    let bin = dir.join(BINARY);
    if !bin.is_file() {
        bail!("{} does not exist", bin.display());
    }
    // Concurrent first callers both build (build.sh serializes them); either result is the same.
    Ok(BIN.get_or_init(|| bin).clone())
}

/// A running CronHPA controller, killed on drop.
pub struct CronHpaController {
    child: Child,
    log: PathBuf,
    /// The zone its cron engine runs in.
    pub tz: String,
}

impl CronHpaController {
    /// Installs the CronHPA CRD in `cluster` (idempotent) and starts a controller in zone `tz`,
    /// returning once its controller loop has started.
    pub fn start(cluster: &Cluster, tz: &str) -> anyhow::Result<CronHpaController> {
        static STARTED: AtomicUsize = AtomicUsize::new(0);
        let bin = binary()?;
        // The controller exits at once unless the CRD is Established.
        cluster.install_crd(&crd_path())?;
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let zone: String = tz.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).collect();
        let log = cluster.dir.join(format!("cronhpa-{zone}-{n}.log"));
        let out = fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&bin)
            .env("KUBECONFIG", &cluster.kubeconfig)
            .env("TZ", tz)
            .stdout(out.try_clone()?)
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut controller = CronHpaController { child, log, tz: tz.to_owned() };
        controller.wait_started(Duration::from_secs(60))?;
        Ok(controller)
    }

    /// Waits for controller-runtime to start the reconcile workers, failing if the process exits.
    fn wait_started(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{BINARY} exited with {status}:\n{}", self.log_tail(30));
            }
            if self.log_text().contains("Starting workers") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{BINARY} did not start its workers within {timeout:?}:\n{}", self.log_tail(30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Everything the controller has logged (stdout and stderr).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log file's path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The process id, for tests that kill it.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the controller (idempotent).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CronHpaController {
    fn drop(&mut self) {
        self.stop();
    }
}
