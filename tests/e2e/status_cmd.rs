//! What on-call reads on the night: `flashsale-operator status` (the real binary, through a
//! kubeconfig that may only read FlashSales), `kubectl get fs -o wide` and `kubectl describe fs`
//! (the toolchain's kubectl), for a ready sale, a sale short of peak, a stalled sale and a sale
//! with a long list of preflight problems, all driven by the real operator.

use anyhow::{Context as _, bail, ensure};
use flashsale_operator::api::FlashSale;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use std::{path::Path, process::Command, time::Duration};

use crate::{
    TestFn,
    harness::Cluster,
    support::{Env, Operator, apply_manifests, at, block_on, client, deployment, eventually, flash_sale, namespace},
};

pub const TESTS: &[(&str, TestFn)] = &[(
    "status_cmd::status_get_wide_and_describe_show_ready_short_and_stalled_sales",
    status_get_wide_and_describe_show_ready_short_and_stalled_sales,
)];

/// `flashsale-operator status ARGS...` through `kubeconfig`; its standard output.
fn status(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
        .arg("status")
        .args(args)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(out.status.success(), "status {args:?} failed: {}{stdout}", String::from_utf8_lossy(&out.stderr));
    Ok(stdout)
}

/// An RFC 3339 instant `offset_secs` from now written at +08:00, as an SRE in Hangzhou would.
fn at_plus8(offset_secs: i64) -> anyhow::Result<(String, String)> {
    let utc = at(offset_secs);
    let t: jiff::Timestamp = utc.parse()?;
    let zone = jiff::tz::TimeZone::fixed(jiff::tz::Offset::constant(8));
    Ok((t.to_zoned(zone).strftime("%Y-%m-%dT%H:%M:%S%:z").to_string(), utc))
}

fn status_get_wide_and_describe_show_ready_short_and_stalled_sales(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let ns = crate::support::block_on_value(async {
        let client = client(cluster).await?;
        namespace(&client, "status-cmd").await
    })?;
    // On-call's identity: it may read FlashSales in this namespace and nothing else.
    let user = format!("oncall-{ns}");
    apply_manifests(cluster, &read_only_role(&ns, &user))?;
    let kubeconfig = cluster.dir.join(format!("{user}.kubeconfig"));
    std::fs::write(&kubeconfig, cluster.user_kubeconfig(&user)?)?;

    let _operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
    let ((start, start_utc), (end, _)) = (at_plus8(180)?, at_plus8(900)?);
    block_on(async {
        let client = client(cluster).await?;
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &deployment("web", 1, None)?).await?;
        // Pods that no node takes: the sale that wants them stays short of peak.
        let mut stuck = deployment("api", 1, None)?;
        if let Some(spec) = stuck.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
            spec.node_selector = Some([("flashsale.dev/no-such-pool".to_owned(), "x".to_owned())].into());
        }
        deployments.create(&PostParams::default(), &stuck).await?;
        let sales: Api<FlashSale> = Api::namespaced(client.clone(), &ns);
        let replicas = |name: &str, peak: i32| serde_json::json!({"ref": {"kind": "Deployment", "name": name}, "scale": {"peak": peak, "mode": "Replicas"}});
        // Preparing within seconds, live in three minutes.
        let window = (start.as_str(), end.as_str());
        let ready = flash_sale("ready", &ns, window, ("175s", "1m"), serde_json::json!([replicas("web", 2)]))?;
        let short = flash_sale("short", &ns, window, ("175s", "1m"), serde_json::json!([replicas("api", 3)]))?;
        // Admission accepts this window (year 9999 is a valid date-time), but its restore
        // boundary, end + 24h, is past the last instant the timeline represents: Stalled.
        let stalled = flash_sale(
            "stalled",
            &ns,
            ("9999-12-30T20:00:00Z", "9999-12-30T21:00:00Z"),
            ("30m", "24h"),
            serde_json::json!([replicas("web", 2)]),
        )?;
        // Seven workloads that do not exist, days ahead: preflight lists seven problems.
        let missing: Vec<serde_json::Value> = (1..=7).map(|i| replicas(&format!("gone-{i}"), 1)).collect();
        let far = flash_sale("missing", &ns, (&at(86_400), &at(90_000)), ("30m", "15m"), serde_json::json!(missing))?;
        for sale in [&ready, &short, &stalled, &far] {
            sales.create(&PostParams::default(), sale).await?;
        }
        let reason_is = |name: &'static str, want: &'static str| {
            let sales = sales.clone();
            async move {
                let live = sales.get(name).await?;
                let ready = live.status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == "Ready");
                Ok(ready.is_some_and(|c| c.reason == want))
            }
        };
        eventually(Duration::from_secs(60), || reason_is("ready", "Prepared")).await.context("ready never Prepared")?;
        eventually(Duration::from_secs(30), || reason_is("short", "Blocked")).await.context("short never Blocked")?;
        eventually(Duration::from_secs(30), || reason_is("stalled", "InvalidSpec")).await.context("never stalled")?;
        eventually(Duration::from_secs(30), || reason_is("missing", "PreflightFailed"))
            .await
            .context("no preflight")?;
        Ok(())
    })?;

    // `status NAME`: one sale, on one screen, read as on-call.
    let text = status(&kubeconfig, &["ready", "-n", &ns])?;
    let head = format!("{ns}/ready: Preparing, Active in ");
    ensure!(text.starts_with(&head) && text.contains(&format!("(at {start_utc})")), "status ready:\n{text}");
    ensure!(text.contains("  Ready     True (Prepared): Everything is in place"), "status ready:\n{text}");
    ensure!(text.contains("  summary   clusters 1/1 ready, workloads 1/1 at peak"), "status ready:\n{text}");
    ensure!(text.contains("  cluster local\n    workloads 1/1 at peak\n"), "status ready:\n{text}");
    ensure!(!text.contains("blocks") && text.contains("  next      nothing to do"), "status ready:\n{text}");
    ensure!(!text.contains("short") && !text.contains("/stalled"), "one sale only:\n{text}");

    // `status -n NS`: every sale of the namespace.
    let all = status(&kubeconfig, &["-n", &ns])?;
    let block = |name: &str| -> anyhow::Result<String> {
        let head = format!("{ns}/{name}: ");
        let from = all.find(&head).with_context(|| format!("no {name} in:\n{all}"))?;
        let rest = &all[from..];
        Ok(rest.split("\n\n").next().unwrap_or(rest).to_owned())
    };
    let short = block("short")?;
    ensure!(short.contains("  Ready     False (Blocked): "), "short:\n{short}");
    ensure!(
        short.contains(&format!("    workloads 0/1 at peak; short: Deployment {ns}/api 0/3 ready (3 short)")),
        "short names the workload and by how much:\n{short}"
    );
    // What blocks it names the pods' reason, from Preparing on.
    ensure!(
        short.contains(&format!(
            "  blocks    cluster local: Deployment {ns}/api: 0/3 replicas ready; 3 pods Pending: Unschedulable"
        )) && short.contains(&format!("cluster local: Deployment {ns}/api has 0/3 replicas ready (3 short)")),
        "short:\n{short}"
    );
    ensure!(short.contains("  next      fix the problems listed"), "short:\n{short}");
    let stalled = block("stalled")?;
    ensure!(
        stalled.contains("  Ready     False (InvalidSpec): spec.cooldownAfter is out of range"),
        "stalled:\n{stalled}"
    );
    ensure!(stalled.contains("  blocks    spec: spec.cooldownAfter is out of range"), "stalled:\n{stalled}");
    ensure!(stalled.contains("  next      fix the field the message names"), "stalled:\n{stalled}");
    let missing = block("missing")?;
    ensure!(missing.contains(&format!("Deployment {ns}/gone-7")), "the cluster's problems are all shown:\n{missing}");

    // `-o json` and `-o yaml`: the same document, with its fields.
    let json: serde_json::Value = serde_json::from_str(&status(&kubeconfig, &["-n", &ns, "-o", "json"])?)?;
    let sale = |name: &str| -> anyhow::Result<&serde_json::Value> {
        let sales = json["sales"].as_array().context("no sales array")?;
        sales.iter().find(|s| s["name"] == name).with_context(|| format!("{name} not in {json}"))
    };
    let (ready, short) = (sale("ready")?, sale("short")?);
    ensure!(ready["phase"] == "Preparing" && ready["nextPhase"] == "Active", "{ready}");
    ensure!(ready["ready"]["status"] == "True" && ready["ready"]["reason"] == "Prepared", "{ready}");
    ensure!(ready["windowStart"] == start_utc.as_str(), "window start in UTC: {ready}");
    let seconds = ready["secondsToNextTransition"].as_i64().context("no countdown")?;
    ensure!((0..=180).contains(&seconds), "countdown {seconds}");
    ensure!(short["clusters"][0]["workloads"]["short"][0]["short"] == 3, "{short}");
    ensure!(sale("stalled")?["stalled"].as_str().is_some_and(|m| m.contains("cooldownAfter")), "{json}");
    let yaml: serde_json::Value = serde_saphyr::from_str(&status(&kubeconfig, &["short", "-n", &ns, "-o", "yaml"])?)?;
    ensure!(
        yaml["sales"][0]["clusters"][0]["workloads"]["short"][0]["name"] == format!("Deployment {ns}/api"),
        "{yaml}"
    );

    // Read-only and confined: the same identity cannot read other namespaces' sales.
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
        .args(["status", "-A", "--kubeconfig"])
        .arg(&kubeconfig)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && stderr.contains("forbidden"), "on-call may not list every namespace: {stderr}");

    get_wide_and_describe(cluster, &ns, &start_utc)?;
    plan_prints_the_same_plan_as_json_and_yaml()
}

/// `plan -o json|yaml` from the binary: a document with the timeline and the levers, the same
/// plan the text shows.
fn plan_prints_the_same_plan_as_json_and_yaml() -> anyhow::Result<()> {
    let file = crate::support::repo().join("examples/double-11.yaml");
    let plan = |output: &str| -> anyhow::Result<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
            .args(["plan", "--now", "2026-11-10T15:45:00Z", "-o", output, "-f"])
            .arg(&file)
            .output()?;
        ensure!(out.status.success(), "plan -o {output}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8(out.stdout)?)
    };
    let text = plan("text")?;
    ensure!(text.contains("*Preparing   2026-11-10T15:30:00Z   2026-11-10 23:30:00 CST"), "{text}");
    let json: serde_json::Value = serde_json::from_str(&plan("json")?)?;
    let yaml: serde_json::Value = serde_saphyr::from_str(&plan("yaml")?)?;
    ensure!(json == yaml, "json and yaml differ:\n{json}\n{yaml}");
    ensure!(json["name"] == "double-11" && json["phase"] == "Preparing", "{json}");
    let preparing = &json["timeline"][1];
    ensure!(preparing["from"] == "2026-11-10T15:30:00Z" && preparing["current"] == true, "{json}");
    let workload = &json["clusters"][0]["workloads"][0];
    ensure!(workload["target"] == "Deployment shop/order-service" && workload["peak"] == 100, "{json}");
    ensure!(json["clusters"][0]["spotDrain"]["metadataEndpoint"] == "http://100.100.100.200", "{json}");
    Ok(())
}

fn get_wide_and_describe(cluster: &Cluster, ns: &str, start_utc: &str) -> anyhow::Result<()> {
    // `kubectl get fs -o wide`: times in UTC, whatever offset the spec was written in, and the
    // summary columns.
    let wide = cluster.kubectl(&["get", "fs", "-n", ns, "-o", "wide"])?;
    let header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(
        header == ["NAME", "PHASE", "START", "END", "READY", "NEXT", "AGE", "CLUSTERS", "AT-PEAK", "REASON"],
        "header: {wide}"
    );
    let row = |name: &str| -> anyhow::Result<Vec<&str>> {
        let line = wide.lines().find(|l| l.split_whitespace().next() == Some(name));
        Ok(line.with_context(|| format!("no row {name}: {wide}"))?.split_whitespace().collect())
    };
    let ready = row("ready")?;
    ensure!(ready[1] == "Preparing" && ready[2] == start_utc && ready[4] == "True", "ready row: {wide}");
    ensure!(ready[3].ends_with('Z') && ready[5] == start_utc, "end and next in UTC: {wide}");
    ensure!(ready[7] == "1/1" && ready[8] == "1/1" && ready[9] == "Prepared", "ready row: {wide}");
    let short = row("short")?;
    ensure!(short[7] == "0/1" && short[8] == "0/1" && short[9] == "Blocked", "short row: {wide}");
    let plain = cluster.kubectl(&["get", "fs", "-n", ns])?;
    ensure!(!plain.contains("AT-PEAK"), "the summary columns are for -o wide only: {plain}");

    // `kubectl describe fs`: Ready is the first condition, and a long message is capped.
    for name in ["ready", "short", "missing"] {
        let described = cluster.kubectl(&["describe", "fs", name, "-n", ns])?;
        let conditions = described.find("  Conditions:").with_context(|| format!("no conditions: {described}"))?;
        let first_type = described[conditions..]
            .lines()
            .find_map(|l| l.trim().strip_prefix("Type:"))
            .map(str::trim)
            .with_context(|| format!("no condition type: {described}"))?;
        if first_type != "Ready" {
            bail!("describe {name} lists {first_type} first:\n{described}");
        }
        if name == "missing" {
            let message = described[conditions..]
                .lines()
                .find_map(|l| l.trim().strip_prefix("Message:"))
                .context("no message")?
                .trim();
            ensure!(
                message.matches("not found").count() == 5 && message.ends_with("; and 2 more"),
                "Ready's message for seven missing workloads: {message}"
            );
        }
    }
    Ok(())
}

/// A Role reading FlashSales in `ns` only, bound to the plain user `user`.
fn read_only_role(ns: &str, user: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: flashsale-reader, namespace: {ns}}}
rules:
- apiGroups: [flashsale.dev]
  resources: [flashsales]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: flashsale-reader, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: flashsale-reader}}
subjects:
- {{apiGroup: rbac.authorization.k8s.io, kind: User, name: {user}}}
"#
    )
}
