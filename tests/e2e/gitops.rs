//! What GitOps tools conclude from a FlashSale's status, computed by the real libraries: kstatus
//! (as Flux uses it) and the Argo CD health script shipped in the chart, both through the small
//! Go tool in `tests/e2e/toolchain/statuscheck`.

use anyhow::{Context as _, bail};
use flashsale_operator::api::{FlashSale, Phase};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    TestFn,
    harness::{Cluster, ClusterOptions},
    support::{Env, Operator, at, block_on_value, client, eventually, namespace, repo},
};

pub const TESTS: &[(&str, TestFn)] = &[(
    "gitops::kstatus_and_argo_cd_read_the_sale_as_on_call_would",
    kstatus_and_argo_cd_read_the_sale_as_on_call_would,
)];

fn statuscheck() -> anyhow::Result<PathBuf> {
    Ok(crate::harness::built("tests/e2e/toolchain/statuscheck/build.sh")?.join("statuscheck"))
}

/// (kstatus status, Argo CD status) for an object.
fn judge(tool: &PathBuf, object: &serde_json::Value) -> anyhow::Result<(String, String)> {
    let lua = repo().join("charts/flashsale-operator/docs/argocd-health.lua");
    let mut child = Command::new(tool)
        .arg("--lua")
        .arg(&lua)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(serde_json::to_string(object)?.as_bytes())?;
    let out = child.wait_with_output()?;
    let verdict: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("statuscheck printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
    let field = |tool: &str| verdict[tool]["status"].as_str().unwrap_or("").to_owned();
    Ok((field("kstatus"), field("argocd")))
}

fn sale(name: &str, ns: &str, start: &str, end: &str, peak: i32) -> anyhow::Result<FlashSale> {
    let workloads =
        serde_json::json!([{"ref": {"kind": "Deployment", "name": name}, "scale": {"peak": peak, "mode": "Replicas"}}]);
    crate::support::flash_sale(name, ns, (start, end), ("1h", "15m"), workloads)
}

async fn verdict_becomes(
    tool: &PathBuf,
    api: &Api<FlashSale>,
    name: &str,
    want: (&str, &str),
    phase: Phase,
) -> anyhow::Result<()> {
    let last = std::sync::Mutex::new((String::new(), String::new()));
    let result = eventually(Duration::from_secs(30), || {
        let last = &last;
        async move {
            let live = api.get(name).await?;
            if live.status.as_ref().and_then(|s| s.phase) != Some(phase) {
                return Ok(false);
            }
            let verdict = judge(tool, &serde_json::to_value(&live)?)?;
            let matched = verdict.0 == want.0 && verdict.1 == want.1;
            *last.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = verdict;
            Ok(matched)
        }
    })
    .await;
    result.with_context(|| format!("{name} in {phase}: want kstatus/argocd {want:?}, last seen {last:?}"))
}

fn kstatus_and_argo_cd_read_the_sale_as_on_call_would(env: &Env) -> anyhow::Result<()> {
    let tool = statuscheck()?;
    let cluster = env.primary()?;
    block_on_value(async {
        let client = client(cluster).await?;
        let ns = namespace(&client, "gitops").await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &crate::support::deployment("fits", 1, Some("100m"))?).await?;
        // 40 replicas of 20 CPUs cannot fit on the test nodes: peak is never reached.
        deployments.create(&PostParams::default(), &crate::support::deployment("too-big", 1, Some("20"))?).await?;
        let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        sales.create(&PostParams::default(), &sale("fits", &ns, &at(600), &at(1200), 2)?).await?;
        sales.create(&PostParams::default(), &sale("too-big", &ns, &at(600), &at(1200), 40)?).await?;
        verdict_becomes(&tool, &sales, "fits", ("Current", "Healthy"), Phase::Preparing).await?;
        verdict_becomes(&tool, &sales, "too-big", ("InProgress", "Progressing"), Phase::Preparing).await?;
        Ok(())
    })?;

    // A spec the operator cannot act on: only possible where the CRD lacks its CEL rules, so a
    // dedicated cluster gets the CRD with them stripped.
    let dir = std::env::temp_dir().join(format!("flashsale-e2e-{}-nocel", std::process::id()));
    let mut bare = Cluster::start(&ClusterOptions { name: "nocel".into(), nodes: 1, spot_nodes: 0 }, &dir, false)?;
    crate::support::install_edited_crd(&bare, strip_cel)?;
    block_on_value(async {
        let client = client(&bare).await?;
        let ns = namespace(&client, "stalled").await?;
        let _operator = Operator::operator(&bare, &["--watch-namespace", &ns])?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let mut backwards = sale("backwards", &ns, &at(600), &at(300), 2)?;
        backwards.spec.prepare_before = "5m".parse()?;
        sales.create(&PostParams::default(), &backwards).await?;
        let last = std::sync::Mutex::new((String::new(), String::new()));
        eventually(Duration::from_secs(20), || {
            let (sales, tool, last) = (&sales, &tool, &last);
            async move {
                let live = sales.get("backwards").await?;
                let verdict = judge(tool, &serde_json::to_value(&live)?)?;
                let matched = verdict.0 == "Failed" && verdict.1 == "Degraded";
                *last.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = verdict;
                Ok(matched)
            }
        })
        .await
        .with_context(|| format!("a stalled sale should be Failed/Degraded, last seen {last:?}"))?;
        let live = sales.get("backwards").await?;
        let stalled = live.status.and_then(|s| s.conditions.into_iter().find(|c| c.type_ == "Stalled"));
        match stalled {
            Some(c) if c.status == "True" && c.message.contains("must be after spec.window.start") => Ok(()),
            other => bail!("Stalled condition does not explain the bad window: {other:?}"),
        }
    })?;
    bare.stop();
    Ok(())
}

pub fn strip_cel(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(strip_cel);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_cel),
        _ => {}
    }
}
