//! The operator's own rights, as the chart grants them, checked by the real authorizer; and a
//! remote cluster whose operator identity lacks a right, named in preflight days ahead.
//!
//! The chart is rendered with the toolchain's `helm template` and its RBAC applied to the test
//! cluster; SubjectAccessReviews then answer what the operator's ServiceAccount (or a user
//! bound to a built-in role) may do.

use anyhow::{Context as _, ensure};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::Secret,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use serde_json::json;
use std::time::Duration;

use crate::{
    TestFn,
    support::{self, Env, Operator, at, block_on_value, client, eventually, namespace, namespace_named},
    tenant::{can, tenant, widened_service_accounts},
};
use flashsale_operator::api::FlashSale;

pub const TESTS: &[(&str, TestFn)] = &[
    (
        "tenant_rbac::the_remote_rights_are_exactly_what_the_levers_need",
        the_remote_rights_are_exactly_what_the_levers_need,
    ),
    (
        "tenant_rbac::the_operators_rights_are_exactly_what_the_levers_and_the_controller_use",
        the_operators_rights_are_exactly_what_the_levers_and_the_controller_use,
    ),
    (
        "tenant_rbac::the_chart_renders_both_modes_and_refuses_what_it_cannot_bind",
        the_chart_renders_both_modes_and_refuses_what_it_cannot_bind,
    ),
    (
        "tenant_rbac::the_chart_without_watch_namespace_grants_no_cluster_takeover",
        the_chart_without_watch_namespace_grants_no_cluster_takeover,
    ),
    (
        "tenant_rbac::the_chart_with_watch_namespace_grants_roles_in_that_namespace_only",
        the_chart_with_watch_namespace_grants_roles_in_that_namespace_only,
    ),
    (
        "tenant_rbac::a_remote_identity_lacking_a_right_is_named_while_scheduled",
        a_remote_identity_lacking_a_right_is_named_while_scheduled,
    ),
];

/// The templates that make up the operator's own identity and rights.
const OPERATOR_RBAC: &[&str] = &["templates/serviceaccount.yaml", "templates/rbac.yaml"];

/// Renders the operator's RBAC as release `release` in a fresh namespace with `sets`, applies it,
/// and returns (release namespace, the operator ServiceAccount's user name).
async fn install_operator_rbac(
    cluster: &crate::harness::Cluster,
    admin: &kube::Client,
    release: &str,
    sets: &[&str],
) -> anyhow::Result<(String, String)> {
    let release_ns = namespace(admin, release).await?;
    let rendered = support::render_chart(cluster, release, &release_ns, sets, OPERATOR_RBAC)?;
    support::apply_manifests(cluster, &rendered).context("applying the chart's RBAC")?;
    let operator = format!("system:serviceaccount:{release_ns}:{release}-flashsale-operator");
    Ok((release_ns, operator))
}

/// Fails naming every (verb, resource, namespace) whose answer is not `want`.
async fn expect_rights(
    admin: &kube::Client,
    who: &str,
    want: bool,
    checks: &[(&str, &str, Option<&str>)],
) -> anyhow::Result<()> {
    let mut wrong = vec![];
    for (verb, resource, ns) in checks {
        if can(admin, who, verb, resource, *ns).await? != want {
            wrong.push(format!("{verb} {resource} in {}", ns.unwrap_or("the cluster")));
        }
    }
    ensure!(wrong.is_empty(), "{who} {} {wrong:?}", if want { "may not" } else { "may" });
    Ok(())
}

/// Without watchNamespace sales may live anywhere, so workloads are cluster-wide; but the
/// operator still cannot take the cluster over: no RBAC or ServiceAccount writes (so no
/// granting itself more), no node patch or eviction (those are the agents', pre-installed), no
/// Secrets outside `saleNamespaces`, no DaemonSets outside the agent namespace. And the
/// built-in `view` / `edit` roles cover FlashSales.
fn the_chart_without_watch_namespace_grants_no_cluster_takeover(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on_value(async {
        let admin = client(cluster).await?;
        let sales_ns = namespace(&admin, "lp-sales").await?;
        let other = namespace(&admin, "lp-other").await?;
        let listed = format!("saleNamespaces={{{sales_ns}}}");
        let (agents_ns, operator) = install_operator_rbac(cluster, &admin, "lp", &[&listed]).await?;
        let sales = Some(sales_ns.as_str());
        let agents = Some(agents_ns.as_str());
        // What the levers need: granted (so the denials below are not an empty chart's).
        expect_rights(
            &admin,
            &operator,
            true,
            &[
                ("get", "secrets", sales),
                ("watch", "secrets", sales),
                ("patch", "apps/deployments/scale", sales),
                ("patch", "apps/statefulsets", Some(other.as_str())),
                ("list", "autoscaling/horizontalpodautoscalers", sales),
                ("create", "batch/jobs", sales),
                ("patch", "configmaps", sales),
                ("patch", "flashsale.dev/flashsales/status", sales),
                ("create", "events.k8s.io/events", sales),
                ("list", "nodes", None),
                ("create", "apps/daemonsets", agents),
                ("patch", "coordination.k8s.io/leases", agents),
            ],
        )
        .await?;
        expect_rights(
            &admin,
            &operator,
            false,
            &[
                ("create", "rbac.authorization.k8s.io/clusterroles", None),
                ("create", "rbac.authorization.k8s.io/clusterrolebindings", None),
                ("patch", "rbac.authorization.k8s.io/clusterroles", None),
                ("create", "rbac.authorization.k8s.io/rolebindings", agents),
                ("create", "serviceaccounts", agents),
                ("get", "secrets", Some(other.as_str())),
                ("list", "secrets", None),
                ("get", "secrets", agents),
                ("patch", "nodes", None),
                ("update", "nodes", None),
                ("create", "pods/eviction", sales),
                ("list", "pods", None),
                ("create", "pods", sales),
                ("create", "apps/daemonsets", sales),
                ("list", "apiextensions.k8s.io/customresourcedefinitions", None),
            ],
        )
        .await?;

        // The built-in roles, through the aggregated ClusterRoles (the controller manager folds
        // them in shortly after they appear).
        let (viewer, editor) = (format!("viewer-{sales_ns}"), format!("editor-{sales_ns}"));
        for (user, role) in [(&viewer, "view"), (&editor, "edit")] {
            let binding: RoleBinding = serde_json::from_value(json!({
                "metadata": {"name": user},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }))?;
            Api::<RoleBinding>::namespaced(admin.clone(), &sales_ns).create(&PostParams::default(), &binding).await?;
        }
        eventually(Duration::from_secs(20), || async {
            Ok(can(&admin, &viewer, "list", "flashsale.dev/flashsales", sales).await?
                && can(&admin, &editor, "create", "flashsale.dev/flashsales", sales).await?
                && can(&admin, &editor, "list", "flashsale.dev/flashsales", sales).await?)
        })
        .await
        .context("view cannot list FlashSales or edit cannot create them")?;
        expect_rights(&admin, &viewer, false, &[("create", "flashsale.dev/flashsales", sales)]).await?;
        expect_rights(&admin, &editor, false, &[("create", "flashsale.dev/flashsales", Some(other.as_str()))]).await?;
        Ok(())
    })
}

/// With watchNamespace every namespaced right is a Role there (and in the agent namespace):
/// nothing in another namespace, and the release namespace's ServiceAccounts gain no node,
/// cluster-wide or cross-namespace rights.
fn the_chart_with_watch_namespace_grants_roles_in_that_namespace_only(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on_value(async {
        let admin = client(cluster).await?;
        let sales_ns = namespace(&admin, "lpns-sales").await?;
        let other = namespace(&admin, "lpns-other").await?;
        let watch = format!("watchNamespace={sales_ns}");
        let (agents_ns, operator) = install_operator_rbac(cluster, &admin, "lpns", &[&watch]).await?;
        let (sales, elsewhere) = (Some(sales_ns.as_str()), Some(other.as_str()));
        expect_rights(
            &admin,
            &operator,
            true,
            &[
                ("watch", "flashsale.dev/flashsales", sales),
                ("get", "secrets", sales),
                ("watch", "apps/deployments", sales),
                ("patch", "apps/deployments/scale", sales),
                ("patch", "autoscaling.alibabacloud.com/cronhorizontalpodautoscalers", sales),
                ("delete", "batch/jobs", sales),
                ("create", "apps/daemonsets", Some(agents_ns.as_str())),
                ("list", "nodes", None),
            ],
        )
        .await?;
        expect_rights(
            &admin,
            &operator,
            false,
            &[
                ("watch", "flashsale.dev/flashsales", None),
                ("watch", "flashsale.dev/flashsales", elsewhere),
                ("get", "secrets", elsewhere),
                ("get", "secrets", Some(agents_ns.as_str())),
                ("patch", "apps/deployments", elsewhere),
                ("list", "apps/deployments", None),
                ("patch", "configmaps", elsewhere),
                ("create", "batch/jobs", elsewhere),
                ("create", "apps/daemonsets", sales),
                ("create", "events.k8s.io/events", elsewhere),
            ],
        )
        .await?;
        let widened = widened_service_accounts(&admin, &agents_ns, &other).await?;
        ensure!(widened.is_empty(), "the operator's namespace holds rights beyond its sales: {widened:?}");
        Ok(())
    })
}

/// The operator is a plain user in the remote cluster with the chart's mode remote rights; one
/// of them taken away shows while the sale is Scheduled, naming the verb, resource, namespace
/// and cluster, in the Ready condition, the cluster's status and an Event, and blocks Ready;
/// given back, the problem goes. The sale and its kubeconfig Secret are the tenant's.
fn a_remote_identity_lacking_a_right_is_named_while_scheduled(env: &Env) -> anyhow::Result<()> {
    let (primary, secondary) = (env.primary()?, env.secondary()?);
    block_on_value(async {
        let admin = client(primary).await?;
        let remote_admin = client(secondary).await?;
        let ns = namespace(&admin, "rights").await?;
        let elsewhere = namespace_named(&remote_admin, &format!("{ns}-elsewhere")).await?;
        namespace_named(&remote_admin, &ns).await?;
        for c in [&admin, &remote_admin] {
            Api::<Deployment>::namespaced(c.clone(), &ns)
                .create(&PostParams::default(), &support::deployment("web", 1, None)?)
                .await?;
        }
        let (user, kubeconfig) = support::remote_identity(secondary, &[&ns])?;

        // The identity holds the levers' rights in the sale's namespace, and nothing that
        // reaches beyond it.
        let there = Some(ns.as_str());
        expect_rights(
            &remote_admin,
            &user,
            true,
            &[
                ("patch", "apps/deployments/scale", there),
                ("patch", "apps/deployments", there),
                ("create", "batch/jobs", there),
                ("list", "nodes", None),
                ("create", "apps/daemonsets", Some(support::AGENT_NAMESPACE)),
            ],
        )
        .await?;
        expect_rights(
            &remote_admin,
            &user,
            false,
            &[
                ("patch", "apps/deployments", Some(elsewhere.as_str())),
                ("get", "secrets", there),
                ("patch", "nodes", None),
                ("create", "pods/eviction", there),
                ("create", "rbac.authorization.k8s.io/clusterroles", None),
                ("create", "serviceaccounts", Some(support::AGENT_NAMESPACE)),
                ("create", "apps/daemonsets", there),
            ],
        )
        .await?;

        // The installer forgot the scale subresource in this namespace.
        let roles: Api<Role> = Api::namespaced(remote_admin.clone(), &ns);
        let role_name = format!("remote-{ns}-flashsale-operator-remote");
        let mut role = roles.get(&role_name).await?;
        let rules = role.rules.take().unwrap_or_default();
        let kept: Vec<_> =
            rules.into_iter().filter(|r| !r.resources.iter().flatten().any(|res| res == "deployments/scale")).collect();
        role.rules = Some(kept);
        role.metadata.managed_fields = None;
        roles.replace(&role_name, &PostParams::default(), &role).await?;
        eventually(Duration::from_secs(10), || async {
            Ok(!can(&remote_admin, &user, "patch", "apps/deployments/scale", there).await?)
        })
        .await
        .context("the scale right was not taken away")?;

        let tenant = tenant(primary, &admin, &ns).await?;
        let here = std::fs::read_to_string(&primary.kubeconfig)?;
        for (name, value) in [("here", here.as_str()), ("there", kubeconfig.as_str())] {
            let secret: Secret =
                serde_json::from_value(json!({"metadata": {"name": name}, "stringData": {"kubeconfig": value}}))?;
            Api::<Secret>::namespaced(tenant.clone(), &ns).create(&PostParams::default(), &secret).await?;
        }
        let _operator = Operator::operator(primary, &["--watch-namespace", &ns])?;
        let mut sale = support::flash_sale(
            "flash",
            &ns,
            (&at(7200), &at(9000)),
            ("30m", "5m"),
            json!([{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 3, "mode": "Replicas"}}]),
        )?;
        sale.spec.clusters = serde_json::from_value(json!([
            {"name": "here", "kubeconfigSecretRef": {"name": "here"}},
            {"name": "there", "kubeconfigSecretRef": {"name": "there"}},
        ]))?;
        let sales: Api<FlashSale> = Api::namespaced(tenant.clone(), &ns);
        sales.create(&PostParams::default(), &sale).await?;

        let missing = format!("cluster there: missing right: patch apps/deployments/scale in namespace {ns}");
        let ready = |s: &FlashSale| s.status.iter().flat_map(|s| &s.conditions).find(|c| c.type_ == "Ready").cloned();
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            Ok(ready(&s)
                .is_some_and(|c| c.status == "False" && c.reason == "PreflightFailed" && c.message.contains(&missing)))
        })
        .await
        .with_context(|| format!("Ready does not name the missing right ({missing})"))?;
        let s = sales.get("flash").await?;
        ensure!(
            s.status.as_ref().and_then(|st| st.phase) == Some(flashsale_operator::api::Phase::Scheduled),
            "not Scheduled: {:?}",
            s.status.as_ref().and_then(|st| st.phase)
        );
        let cluster_message = |s: &FlashSale, name: &str| {
            s.status.iter().flat_map(|s| &s.clusters).find(|c| c.name == name).and_then(|c| c.message.clone())
        };
        let there_message = cluster_message(&s, "there").unwrap_or_default();
        ensure!(
            there_message.contains(&format!("missing right: patch apps/deployments/scale in namespace {ns}")),
            "status.clusters[there].message: {there_message:?}"
        );
        ensure!(
            !cluster_message(&s, "here").unwrap_or_default().contains("missing right"),
            "the admin's cluster reports a missing right: {:?}",
            cluster_message(&s, "here")
        );
        eventually(Duration::from_secs(10), || async {
            Ok(support::event_notes(&tenant, &ns, "flash").await?.iter().any(|n| n.contains(&missing)))
        })
        .await
        .context("no Event names the missing right")?;
        // Nothing was changed in either cluster while Scheduled.
        for (c, name) in [(&admin, "here"), (&remote_admin, "there")] {
            let web = Api::<Deployment>::namespaced(c.clone(), &ns).get("web").await?;
            ensure!(
                web.spec.and_then(|s| s.replicas) == Some(1)
                    && !web.metadata.annotations.unwrap_or_default().contains_key("flashsale.dev/sale"),
                "cluster {name}: the Scheduled sale changed the Deployment"
            );
        }

        // The installer puts the right back: the next preflight finds nothing missing.
        support::remote_identity(secondary, &[&ns])?;
        let nudge = json!({"metadata": {"annotations": {"e2e/nudge": "1"}}});
        Api::<FlashSale>::namespaced(admin.clone(), &ns)
            .patch("flash", &PatchParams::default(), &Patch::Merge(nudge))
            .await?;
        eventually(Duration::from_secs(20), || async {
            let s = sales.get("flash").await?;
            Ok(ready(&s).is_some_and(|c| !c.message.contains("missing right") && c.reason != "PreflightFailed"))
        })
        .await
        .context("the missing right is still reported after it was granted")?;
        Ok(())
    })
}

/// The chart in both modes: lint-clean, `mode: remote` renders no operator (no Deployment, no
/// operator ServiceAccount, no aggregated user roles) and refuses to render without a subject
/// or with an unknown mode, naming the value; every rendered object passes the API server's
/// validation (server-side dry run).
fn the_chart_renders_both_modes_and_refuses_what_it_cannot_bind(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let chart = support::repo().join("charts/flashsale-operator").display().to_string();
    let remote = ["mode=remote", "remote.subjects[0].kind=Group", "remote.subjects[0].name=flashsale-operators"];
    let mut lint = vec!["lint", "--strict", chart.as_str()];
    for set in remote {
        lint.extend(["--set", set]);
    }
    cluster.helm(&lint)?;
    let rendered = support::render_chart(cluster, "modes", support::AGENT_NAMESPACE, &remote, &[])?;
    for kind in ["Deployment", "Service"] {
        ensure!(!rendered.contains(&format!("\nkind: {kind}\n")), "mode remote renders a {kind}");
    }
    // The only ServiceAccount is the drain agents' identity (the installer's, in both modes).
    let accounts = rendered_names(&rendered, "ServiceAccount")?;
    ensure!(accounts == ["flashsale-drain-agent"], "mode remote renders the ServiceAccounts {accounts:?}");
    ensure!(!rendered.contains("aggregate-to-"), "mode remote renders the user roles of a cluster without the CRD");
    for kind in ["Namespace", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"] {
        ensure!(rendered.contains(&format!("\nkind: {kind}\n")), "mode remote renders no {kind}");
    }
    ensure!(
        rendered
            .contains("  - kind: Group\n    name: \"flashsale-operators\"\n    apiGroup: rbac.authorization.k8s.io"),
        "{rendered}"
    );
    // A dry run creates nothing, so the namespaced objects need their namespace to exist.
    let agent_namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n", support::AGENT_NAMESPACE);
    support::apply_manifests(cluster, &agent_namespace)?;
    cluster
        .kubectl_stdin(&["apply", "--server-side", "--force-conflicts", "--dry-run=server", "-f", "-"], Some(&rendered))
        .context("the API server rejected the rendered mode remote")?;
    let with_watch = support::render_chart(cluster, "modes", support::AGENT_NAMESPACE, &["watchNamespace=shop"], &[])?;
    ensure!(with_watch.contains("--watch-namespace=shop"), "the Deployment does not watch the namespace");
    let refusals: [(&[&str], &str); 3] = [
        (&["mode=remote"], "mode remote needs remote.subjects"),
        (&["mode=cluster"], "mode must be operator or remote, not \"cluster\""),
        (
            &["mode=remote", "remote.subjects[0].kind=ServiceAccount", "remote.subjects[0].name=op"],
            "remote.subjects[].namespace of a ServiceAccount",
        ),
    ];
    for (sets, message) in refusals {
        match support::render_chart(cluster, "modes", support::AGENT_NAMESPACE, sets, &[]) {
            Err(err) if format!("{err:#}").contains(message) => {}
            other => anyhow::bail!("rendering with {sets:?}: expected a refusal naming {message:?}, got {other:?}"),
        }
    }
    Ok(())
}

/// The names of the objects of `kind` in `rendered`.
fn rendered_names(rendered: &str, kind: &str) -> anyhow::Result<Vec<String>> {
    let mut names = vec![];
    for value in serde_saphyr::from_multiple::<serde_json::Value>(rendered)? {
        if value.get("kind").and_then(|k| k.as_str()) == Some(kind) {
            names.push(value.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default().to_owned());
        }
    }
    Ok(names)
}

/// One granted or needed right, as comparable text: `verb group/resource[/sub] [name] where`.
type RightText = String;

/// Every right the Roles and ClusterRoles in `rendered` grant, one entry per verb, resource and
/// name, scoped to the Role's namespace or `(cluster-wide)`, in the form
/// [`flashsale_operator::levers::preflight::Right`] prints.
fn granted_rights(rendered: &str, skip: &[&str]) -> anyhow::Result<std::collections::BTreeSet<RightText>> {
    let mut granted = std::collections::BTreeSet::new();
    for value in serde_saphyr::from_multiple::<serde_json::Value>(rendered)? {
        let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or_default();
        let name = value.pointer("/metadata/name").and_then(|n| n.as_str()).unwrap_or_default();
        if (kind != "Role" && kind != "ClusterRole") || skip.contains(&name) {
            continue;
        }
        let ns = value.pointer("/metadata/namespace").and_then(|n| n.as_str());
        for rule in value.get("rules").and_then(|r| r.as_array()).into_iter().flatten() {
            let list = |field: &str| -> Vec<String> {
                rule.get(field)
                    .and_then(|v| v.as_array())
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            let names = list("resourceNames");
            let names: Vec<Option<String>> =
                if names.is_empty() { vec![None] } else { names.into_iter().map(Some).collect() };
            for group in list("apiGroups") {
                for resource in list("resources") {
                    for verb in list("verbs") {
                        for name in &names {
                            let mut text = format!("{verb} ");
                            if !group.is_empty() {
                                text.push_str(&format!("{group}/"));
                            }
                            text.push_str(&resource);
                            if let Some(name) = name {
                                text.push_str(&format!(" {name}"));
                            }
                            match ns {
                                Some(ns) => text.push_str(&format!(" in namespace {ns}")),
                                None => text.push_str(" (cluster-wide)"),
                            }
                            granted.insert(text);
                        }
                    }
                }
            }
        }
    }
    Ok(granted)
}

/// The union of the rights the levers need, for sales in `ns` with agents in `agents`, over
/// sales that between them use every lever in every mode.
fn every_lever_needs(ns: &str, agents: &str) -> anyhow::Result<std::collections::BTreeSet<RightText>> {
    use flashsale_operator::levers::preflight::{ClusterFacts, needed_rights};
    let warm = json!([{"name": "c", "startBefore": "5m", "template": {"spec": {"template": {"spec": {
        "containers": [{"name": "w", "image": "w"}], "restartPolicy": "Never"}}}}}]);
    let flags = |target: &str| json!({"target": target, "flags": [{"name": "f", "offDuring": ["Active"]}]});
    let mut needed = std::collections::BTreeSet::new();
    for (mode, kind, degradation) in [
        ("Auto", "Deployment", flags("ConfigMap")),
        ("CronHPA", "StatefulSet", flags("FeatureFlag")),
        ("HPA", "StatefulSet", flags("ConfigMap")),
        ("Auto", "StatefulSet", flags("ConfigMap")),
        ("CronHPA", "Deployment", flags("ConfigMap")),
    ] {
        let mut sale = support::flash_sale(
            "all",
            ns,
            (&at(3600), &at(7200)),
            ("30m", "5m"),
            json!([{"ref": {"kind": kind, "name": "w"}, "scale": {"peak": 2, "mode": mode}}]),
        )?;
        sale.spec.spot_drain = Some(serde_json::from_value(json!({"enabled": true}))?);
        sale.spec.cache_warm = serde_json::from_value(warm.clone())?;
        sale.spec.degradation = Some(serde_json::from_value(degradation)?);
        for cronhpa_installed in [false, true] {
            let rights = needed_rights(&sale.spec, ns, agents, ClusterFacts { cronhpa_installed });
            needed.extend(rights.iter().map(ToString::to_string));
        }
    }
    Ok(needed)
}

/// The remote identity's rights are exactly what the levers' preflight derivation says they
/// need (plus the DaemonSet get/watch the drain-agent contract grants), nothing more: every
/// rule of the rendered mode remote matched against `preflight::needed_rights`.
fn the_remote_rights_are_exactly_what_the_levers_need(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let sets =
        ["mode=remote", "remote.subjects[0].kind=User", "remote.subjects[0].name=op", "remote.namespaces={shop}"];
    let rendered = support::render_chart(cluster, "exact", support::AGENT_NAMESPACE, &sets, &[])?;
    // The drain agents' own ClusterRole is bound to their ServiceAccount, not to the remote identity.
    let granted = granted_rights(&rendered, &["flashsale-drain-agent"])?;
    let mut wanted = every_lever_needs("shop", support::AGENT_NAMESPACE)?;
    for verb in ["get", "watch"] {
        wanted.insert(format!("{verb} apps/daemonsets in namespace {}", support::AGENT_NAMESPACE));
    }
    let beyond: Vec<_> = granted.difference(&wanted).collect();
    let short: Vec<_> = wanted.difference(&granted).collect();
    ensure!(
        beyond.is_empty() && short.is_empty(),
        "mode remote grants more than the levers use: {beyond:#?}\nand lacks what they use: {short:#?}"
    );
    Ok(())
}

/// The operator's own rights with watchNamespace: exactly the levers' (the same derivation as
/// preflight's) plus what the controller itself does, each listed here with its reason;
/// nothing else. (The aggregated user roles are for people, not the operator.)
fn the_operators_rights_are_exactly_what_the_levers_and_the_controller_use(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    let release_ns = support::AGENT_NAMESPACE;
    let rendered = support::render_chart(cluster, "exact", release_ns, &["watchNamespace=shop"], OPERATOR_RBAC)?;
    let granted = granted_rights(&rendered, &["exact-flashsale-operator-view", "exact-flashsale-operator-edit"])?;
    let mut wanted = every_lever_needs("shop", release_ns)?;
    let controller: [(&str, &[&str], &str); 9] = [
        // The sales: watched, finalizer patched, status written.
        ("flashsale.dev/flashsales", &["get", "list", "watch", "patch"], "shop"),
        ("flashsale.dev/flashsales/status", &["get", "patch"], "shop"),
        // Events on the sale; the recorder patches repeats.
        ("events.k8s.io/events", &["create", "patch"], "shop"),
        // Watches that reconcile a sale when what it holds changes.
        ("apps/deployments", &["list", "watch"], "shop"),
        ("apps/statefulsets", &["list", "watch"], "shop"),
        ("batch/jobs", &["watch"], "shop"),
        // Kubeconfig Secrets: read, and watched so a rotated one rebuilds its client.
        ("secrets", &["get", "list", "watch"], "shop"),
        // The contract's DaemonSet rights beyond what the lever's pass uses.
        ("apps/daemonsets", &["get", "watch"], release_ns),
        // Leader election.
        ("coordination.k8s.io/leases", &["get", "create", "patch", "update"], release_ns),
    ];
    for (resource, verbs, ns) in controller {
        for verb in verbs {
            wanted.insert(format!("{verb} {resource} in namespace {ns}"));
        }
    }
    let beyond: Vec<_> = granted.difference(&wanted).collect();
    let short: Vec<_> = wanted.difference(&granted).collect();
    ensure!(
        beyond.is_empty() && short.is_empty(),
        "the operator is granted more than it uses: {beyond:#?}\nand lacks what it uses: {short:#?}"
    );
    Ok(())
}
