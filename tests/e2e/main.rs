//! End-to-end tests against a real control plane (see `harness`).
//!
//! One primary cluster is shared by every test of this binary (each test in its own
//! namespace); a second cluster starts on demand for tests that need two. Both are torn down
//! when the run ends, whether tests pass or fail.

mod agent;
mod chart;
mod core;
mod credentials;
mod dashboard;
mod drain_agents;
mod flags;
mod foundation;
mod gitops;
mod harness;
mod levers;
mod rehearsal;
mod status_cmd;
mod support;
mod tenant;
mod tenant_agents;
mod tenant_confine;
mod tenant_kubeconfig;
mod tenant_rbac;
mod timeline;
mod warmup;
mod who_cronhpa;
mod who_flags;
mod who_gitops;
mod who_replicas;

use libtest_mimic::{Arguments, Failed, Trial};
use std::sync::Arc;
use support::Env;

/// A test body: gets the shared environment, returns an error to fail.
type TestFn = fn(&Env) -> anyhow::Result<()>;

fn trial(env: &Arc<Env>, name: &'static str, f: TestFn) -> Trial {
    let env = env.clone();
    Trial::test(name, move || f(&env).map_err(|e| Failed::from(format!("{e:#}"))))
}

fn main() {
    let args = Arguments::from_args();
    let env = Arc::new(Env::new());
    let tests: Vec<Trial> = foundation::TESTS
        .iter()
        .chain(timeline::TESTS)
        .chain(gitops::TESTS)
        .chain(levers::TESTS)
        .chain(drain_agents::TESTS)
        .chain(warmup::TESTS)
        .chain(flags::TESTS)
        .chain(agent::TESTS)
        .chain(tenant::TESTS)
        .chain(tenant_confine::TESTS)
        .chain(tenant_kubeconfig::TESTS)
        .chain(tenant_rbac::TESTS)
        .chain(tenant_agents::TESTS)
        .chain(core::TESTS)
        .chain(credentials::TESTS)
        .chain(status_cmd::TESTS)
        .chain(dashboard::TESTS)
        .chain(chart::TESTS)
        .chain(who_gitops::TESTS)
        .chain(rehearsal::TESTS)
        .chain(who_cronhpa::TESTS)
        .chain(who_flags::TESTS)
        .chain(who_replicas::TESTS)
        .map(|(name, f)| trial(&env, name, *f))
        .collect();
    let conclusion = libtest_mimic::run(&args, tests);
    // Every test closure has finished and dropped its handle: this tears the clusters down.
    drop(env);
    conclusion.exit();
}
