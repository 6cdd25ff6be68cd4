//! Cluster credentials people already have: a Cluster API kubeconfig Secret and an Argo CD
//! cluster Secret name a sale's clusters as a plain kubeconfig does, by the same rules.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::FlashSale;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Secret};
use kube::{
    Api, Client,
    api::{Patch, PatchParams, PostParams},
};
use std::{
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    support::{Env, Operator, at, block_on, client, events, eventually, namespace, namespace_named, remote_identity},
    tenant::tenant,
};

pub const TESTS: &[(&str, crate::TestFn)] = &[(
    "credentials::cluster_api_and_argocd_secrets_reach_their_clusters_and_a_refused_argo_field_connects_nowhere",
    cluster_api_and_argocd_secrets_reach_their_clusters_and_a_refused_argo_field_connects_nowhere,
)];

/// A loopback listener that counts the connections it accepts (and never answers).
fn counting_listener() -> anyhow::Result<(u16, Arc<AtomicUsize>)> {
    let socket = TcpListener::bind("127.0.0.1:0")?;
    let port = socket.local_addr()?.port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        let mut held = vec![];
        for stream in socket.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            held.push(stream);
        }
    });
    Ok((port, accepted))
}

/// A Deployment `web` of one replica.
async fn web(client: &Client, ns: &str) -> anyhow::Result<()> {
    let deployment = crate::support::deployment("web", 1, None)?;
    Api::<Deployment>::namespaced(client.clone(), ns).create(&PostParams::default(), &deployment).await?;
    Ok(())
}

async fn replicas(client: &Client, ns: &str) -> anyhow::Result<Option<i32>> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns).get("web").await?;
    Ok(deployment.spec.and_then(|s| s.replicas))
}

/// An Argo CD cluster Secret as `argocd cluster add` writes it, for `server` with `config`.
fn argocd_secret(name: &str, server: &str, config: &serde_json::Value) -> anyhow::Result<Secret> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"argocd.argoproj.io/secret-type": "cluster"}},
        "type": "Opaque",
        "stringData": {"name": "here", "server": server, "config": config.to_string()},
    }))?)
}

/// The Argo CD `config` for the identity in a kubeconfig with embedded certificates: its
/// `tlsClientConfig` carries the CA and the client certificate and key (base64, as Argo CD's
/// Go `[]byte` fields are in JSON), TLS verified.
fn argocd_config_of(kubeconfig: &str) -> anyhow::Result<(String, serde_json::Value)> {
    let parsed: serde_json::Value = serde_saphyr::from_str(kubeconfig)?;
    let field = |value: &serde_json::Value, name: &str| {
        value[name].as_str().map(str::to_owned).with_context(|| format!("kubeconfig without {name}"))
    };
    let (cluster, user) = (&parsed["clusters"][0]["cluster"], &parsed["users"][0]["user"]);
    let config = serde_json::json!({"tlsClientConfig": {
        "insecure": false,
        "caData": field(cluster, "certificate-authority-data")?,
        "certData": field(user, "client-certificate-data")?,
        "keyData": field(user, "client-key-data")?,
    }});
    Ok((field(cluster, "server")?, config))
}

/// One sale spans two API servers: the second cluster through a Cluster API kubeconfig Secret
/// (key `value`, the operator a plain user there with the chart's `mode: remote` rights), the
/// first through an Argo CD cluster Secret. The Argo CD Secret first holds an
/// `execProviderConfig` aimed at a listener: status, an Event and `plan` name
/// `config.execProviderConfig`, the command never runs and the listener never sees a connection. Once the tenant rewrites the
/// Secret with inline TLS credentials, the operator rebuilds the client and prescales there too;
/// deleting the sale restores both clusters through the same Secrets.
fn cluster_api_and_argocd_secrets_reach_their_clusters_and_a_refused_argo_field_connects_nowhere(
    env: &Env,
) -> anyhow::Result<()> {
    let (primary, secondary) = (env.primary()?, env.secondary()?);
    block_on(async {
        let here = client(primary).await?;
        let there = client(secondary).await?;
        let ns = namespace(&here, "credentials").await?;
        namespace_named(&there, &ns).await?;
        web(&here, &ns).await?;
        web(&there, &ns).await?;
        let as_tenant = tenant(primary, &here, &ns).await?;
        let secrets: Api<Secret> = Api::namespaced(as_tenant.clone(), &ns);

        // What Cluster API writes for a workload cluster `shop`: a kubeconfig under `value`.
        let (_, there_kubeconfig) = remote_identity(secondary, &[&ns])?;
        let capi: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop-kubeconfig", "labels": {"cluster.x-k8s.io/cluster-name": "shop"}},
            "type": "cluster.x-k8s.io/secret",
            "stringData": {"value": there_kubeconfig},
        }))?;
        secrets.create(&PostParams::default(), &capi).await?;

        let marker = primary.dir.join(format!("argocd-exec-ran-{ns}"));
        let _ = std::fs::remove_file(&marker);
        let (port, accepted) = counting_listener()?;
        let exec = serde_json::json!({
            "execProviderConfig": {
                "command": "sh",
                "args": ["-c", format!("touch {}", marker.display())],
                "apiVersion": "client.authentication.k8s.io/v1",
            },
            "tlsClientConfig": {"insecure": true},
        });
        let listener_url = format!("https://127.0.0.1:{port}");
        secrets.create(&PostParams::default(), &argocd_secret("cluster-here", &listener_url, &exec)?).await?;

        let sale: FlashSale = serde_json::from_value(serde_json::json!({
            "apiVersion": "flashsale.dev/v1alpha1",
            "kind": "FlashSale",
            "metadata": {"name": "borrowed-credentials", "namespace": ns},
            "spec": {
                "window": {"start": at(14), "end": at(120)},
                "prepareBefore": "10s",
                "cooldownAfter": "5s",
                "clusters": [
                    {"name": "shop", "kubeconfigSecretRef": {"name": "shop-kubeconfig", "format": "ClusterAPI"}},
                    {"name": "here", "kubeconfigSecretRef": {"name": "cluster-here", "format": "ArgoCD"}},
                ],
                "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 2, "mode": "Replicas"}}],
            }
        }))?;
        let sales: Api<FlashSale> = Api::namespaced(as_tenant.clone(), &ns);
        sales.create(&PostParams::default(), &sale).await?;
        let mut operator = Operator::operator(primary, &["--watch-namespace", &ns])?;
        operator.wait_ready(Duration::from_secs(30)).await?;

        let refusal = format!(
            "Argo CD cluster Secret {ns}/cluster-here: config.execProviderConfig is not allowed: {}",
            flashsale_operator::clusters::argocd::CREDENTIALS_POLICY
        );
        let cluster_status = |name: &'static str| {
            let sales = sales.clone();
            async move {
                let sale = sales.get("borrowed-credentials").await?;
                let clusters = sale.status.map(|s| s.clusters).unwrap_or_default();
                anyhow::Ok(clusters.into_iter().find(|c| c.name == name))
            }
        };
        let shown = eventually(Duration::from_secs(30), || async {
            Ok(cluster_status("here").await?.is_some_and(|c| !c.reachable && c.message.as_deref() == Some(&refusal)))
        })
        .await;
        if let Err(err) = shown {
            anyhow::bail!("{err:#}; cluster here shows {:?}, want {refusal:?}", cluster_status("here").await?);
        }
        // Preparing: the Cluster API cluster is prescaled while the refused one waits.
        eventually(Duration::from_secs(30), || async { Ok(replicas(&there, &ns).await? == Some(2)) })
            .await
            .context("the cluster behind the Cluster API Secret was never prescaled")?;
        ensure!(replicas(&here, &ns).await? == Some(1), "the refused cluster was acted on");
        let refused = events(&as_tenant, &ns, "borrowed-credentials").await?;
        ensure!(
            refused
                .iter()
                .any(|(reason, note)| reason == "KubeconfigRefused" && note.contains("config.execProviderConfig")),
            "no KubeconfigRefused Event names config.execProviderConfig: {refused:?}"
        );
        // `plan --kubeconfig` on a reviewer's machine reads the same Secrets by the same rules.
        let file = primary.dir.join(format!("plan-{ns}.yaml"));
        std::fs::write(&file, serde_saphyr::to_string(&sale)?)?;
        let plan = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
            .args(["plan", "-f"])
            .arg(&file)
            .arg("--kubeconfig")
            .arg(&primary.kubeconfig)
            .output()?;
        let printed = String::from_utf8_lossy(&plan.stdout);
        ensure!(plan.status.success(), "plan failed: {}", String::from_utf8_lossy(&plan.stderr));
        ensure!(printed.contains(&format!("preflight:  {refusal}")), "plan does not say {refusal:?}:\n{printed}");
        ensure!(accepted.load(Ordering::SeqCst) == 0, "the refused Argo CD Secret's server got a connection");
        ensure!(!marker.exists(), "the Argo CD Secret's execProviderConfig ran inside the operator");

        // The tenant fixes the Secret: inline TLS credentials for the first API server.
        let (server, config) = argocd_config_of(&std::fs::read_to_string(&primary.kubeconfig)?)?;
        let fixed = argocd_secret("cluster-here", &server, &config)?;
        let params = PatchParams::apply("e2e").force();
        secrets.patch("cluster-here", &params, &Patch::Apply(&fixed)).await?;
        eventually(Duration::from_secs(30), || async { Ok(replicas(&here, &ns).await? == Some(2)) })
            .await
            .context("the cluster behind the fixed Argo CD Secret was never prescaled")?;
        eventually(Duration::from_secs(15), || async {
            Ok(cluster_status("here").await?.is_some_and(|c| c.reachable && c.message.is_none()))
        })
        .await
        .with_context(|| "cluster here never showed reachable after the Secret was fixed".to_owned())?;

        // Deleting the sale restores both clusters through the same Secrets.
        Api::<FlashSale>::namespaced(here.clone(), &ns).delete("borrowed-credentials", &Default::default()).await?;
        eventually(Duration::from_secs(30), || async {
            Ok(replicas(&here, &ns).await? == Some(1)
                && replicas(&there, &ns).await? == Some(1)
                && sales.get_opt("borrowed-credentials").await?.is_none())
        })
        .await
        .context("the deleted sale did not restore both clusters and go")?;
        ensure!(accepted.load(Ordering::SeqCst) == 0, "the listener got a connection");
        ensure!(!marker.exists(), "the exec provider ran");
        operator.ensure_alive()?;
        drop(operator);
        Ok(())
    })
}
