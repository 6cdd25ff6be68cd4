//! Kubeconfig Secrets are data, tried as a tenant: a Secret that names a file on the operator's
//! disk or a command to run is refused before any client exists (no request leaves the
//! operator, no command runs), the refusal names the field in status and in an Event; with the
//! installer's `--allow-kubeconfig-exec`, a failing plugin's output stays out of status and
//! events, and a plugin or a server that never answers holds up no other sale.

use anyhow::{Context as _, ensure};
use flashsale_operator::api::{FlashSale, Phase};
use kube::{Api, Client, api::PostParams};
use std::{
    net::TcpListener,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::{
    support::{Env, Operator, at, block_on, client, events, eventually, kubeconfig_secret, namespace},
    tenant::{tenant, widened_service_accounts},
};

pub const TESTS: &[(&str, crate::TestFn)] = &[
    (
        "tenant_kubeconfig::token_files_exec_plugins_and_key_paths_are_refused_before_any_request",
        token_files_exec_plugins_and_key_paths_are_refused_before_any_request,
    ),
    (
        "tenant_kubeconfig::allowed_exec_plugins_leak_no_output_and_hung_clusters_block_no_other_sale",
        allowed_exec_plugins_leak_no_output_and_hung_clusters_block_no_other_sale,
    ),
];

/// A loopback TCP listener that counts the connections it accepts and holds each one open
/// without ever answering (so a client that connects waits until its own timeout).
struct Listener {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

fn listener() -> anyhow::Result<Listener> {
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
    Ok(Listener { port, accepted })
}

/// A kubeconfig for `server` whose one user is `user` (a YAML flow mapping).
fn kubeconfig(server: &str, user: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{{name: k, cluster: {{server: '{server}', insecure-skip-tls-verify: true}}}}]\n\
         users: [{{name: u, user: {user}}}]\n\
         contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
    )
}

/// A sale spanning the clusters `(name, Secret name)`, its window `start_in` seconds away.
fn sale(name: &str, ns: &str, clusters: &[(&str, &str)], start_in: i64) -> anyhow::Result<FlashSale> {
    let clusters: Vec<serde_json::Value> = clusters
        .iter()
        .map(|(name, secret)| serde_json::json!({"name": name, "kubeconfigSecretRef": {"name": secret}}))
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "flashsale.dev/v1alpha1",
        "kind": "FlashSale",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "window": {"start": at(start_in), "end": at(start_in + 60)},
            "prepareBefore": "4s",
            "cooldownAfter": "5s",
            "clusters": clusters,
            "workloads": [{"ref": {"kind": "Deployment", "name": "web"}, "scale": {"peak": 2}}],
        }
    }))?)
}

/// The status message of each cluster of sale `name`, once every one of `clusters` has one.
async fn cluster_messages(
    sales: &Api<FlashSale>,
    name: &str,
    clusters: &[&str],
    timeout: Duration,
) -> anyhow::Result<Vec<(String, String)>> {
    let found = std::sync::Mutex::new(vec![]);
    let result = eventually(timeout, || async {
        let sale = sales.get(name).await?;
        let shown: Vec<(String, String)> = (sale.status.map(|s| s.clusters).unwrap_or_default().iter())
            .map(|c| (c.name.clone(), c.message.clone().unwrap_or_default()))
            .collect();
        let done = clusters.iter().all(|want| shown.iter().any(|(n, m)| n == want && !m.is_empty()));
        *found.lock().map_err(|_| anyhow::anyhow!("poisoned"))? = shown;
        Ok(done)
    })
    .await;
    let found = found.into_inner().unwrap_or_default();
    result.with_context(|| format!("sale {name} never showed a message for each of {clusters:?}; shown: {found:?}"))?;
    Ok(found)
}

fn message_of<'a>(messages: &'a [(String, String)], cluster: &str) -> &'a str {
    messages.iter().find(|(n, _)| n == cluster).map(|(_, m)| m.as_str()).unwrap_or_default()
}

const POLICY: &str = "kubeconfig Secrets may hold only inline credentials (token, client-certificate-data/client-key-data, username/password)";

/// The first path: a tenant's Secret made the operator send its own ServiceAccount token
/// to the tenant's listener (`tokenFile`), run a command (`exec`) and read a key file
/// (`client-key`). Each is refused naming the field, in status and in a KubeconfigRefused Event,
/// and the listener every Secret points at never sees a connection.
fn token_files_exec_plugins_and_key_paths_are_refused_before_any_request(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "tenant-kubeconfig").await?;
        let elsewhere = namespace(&admin, "tenant-kubeconfig-other").await?;
        let as_tenant = tenant(cluster, &admin, &ns).await?;

        // Stands for the operator's own ServiceAccount token, on the operator's disk.
        let token_file = cluster.dir.join(format!("operator-token-{ns}"));
        let operator_token = format!("operator-sa-token-{}", std::process::id());
        std::fs::write(&token_file, &operator_token)?;
        let marker = cluster.dir.join(format!("exec-ran-{ns}"));
        let _ = std::fs::remove_file(&marker);
        let tenants_server = listener()?;
        let server = format!("https://127.0.0.1:{}", tenants_server.port);

        let secrets = [
            ("token-file", format!("{{tokenFile: '{}'}}", token_file.display())),
            (
                "exec",
                format!(
                    "{{exec: {{apiVersion: client.authentication.k8s.io/v1, command: sh, args: ['-c', 'touch {}']}}}}",
                    marker.display()
                ),
            ),
            ("key-path", format!("{{client-certificate-data: 'Q0VSVA==', client-key: '{}'}}", token_file.display())),
        ];
        for (name, user) in &secrets {
            kubeconfig_secret(&as_tenant, &ns, name, "kubeconfig", &kubeconfig(&server, user)).await?;
        }
        let sales: Api<FlashSale> = Api::namespaced(as_tenant.clone(), &ns);
        let clusters = [("a", "token-file"), ("b", "exec"), ("c", "key-path")];
        sales.create(&PostParams::default(), &sale("borrowed", &ns, &clusters, 600)?).await?;

        let mut operator = Operator::operator(cluster, &["--watch-namespace", &ns])?;
        operator.wait_ready(Duration::from_secs(30)).await?;
        let shown = cluster_messages(&sales, "borrowed", &["a", "b", "c"], Duration::from_secs(30)).await?;
        for (cluster, secret, field) in [
            ("a", "token-file", "users[0].user.tokenFile"),
            ("b", "exec", "users[0].user.exec"),
            ("c", "key-path", "users[0].user.client-key"),
        ] {
            let want = format!("kubeconfig Secret {ns}/{secret}: {field} is not allowed: {POLICY}");
            ensure!(message_of(&shown, cluster) == want, "cluster {cluster}: status says {shown:?}, want {want:?}");
        }
        // The tenant reads the same in Events (through its own rights).
        let refused_only = || async {
            let mut refused = events(&as_tenant, &ns, "borrowed").await?;
            refused.retain(|(reason, _)| reason == "KubeconfigRefused");
            anyhow::Ok(refused)
        };
        let waited = eventually(Duration::from_secs(15), || async { Ok(refused_only().await?.len() >= 3) }).await;
        if let Err(err) = waited {
            anyhow::bail!("{err:#}; events: {:?}", events(&admin, &ns, "borrowed").await?);
        }
        let refused = refused_only().await?;
        for field in ["users[0].user.tokenFile", "users[0].user.exec", "users[0].user.client-key"] {
            ensure!(refused.iter().any(|(_, note)| note.contains(field)), "no Event names {field}: {refused:?}");
        }
        // Several passes later: still nothing reached the tenant's server, nothing ran, the
        // refusal was told once per cluster, and the token never showed anywhere the tenant reads.
        tokio::time::sleep(Duration::from_secs(4)).await;
        operator.ensure_alive()?;
        ensure!(
            tenants_server.accepted.load(Ordering::SeqCst) == 0,
            "the tenant's server got {} connection(s) from the operator",
            tenants_server.accepted.load(Ordering::SeqCst)
        );
        ensure!(!marker.exists(), "the kubeconfig's exec command ran inside the operator");
        let all = events(&as_tenant, &ns, "borrowed").await?;
        let told = all.iter().filter(|(reason, _)| reason == "KubeconfigRefused").count();
        ensure!(told == 3, "KubeconfigRefused {told} times for 3 refusals: {all:?}");
        let status = serde_json::to_string(&sales.get("borrowed").await?.status)?;
        ensure!(!status.contains(&operator_token) && !format!("{all:?}").contains(&operator_token), "token leaked");
        // `plan --kubeconfig` on a reviewer's machine reads the same Secrets by the same rules.
        let file = cluster.dir.join(format!("plan-{ns}.yaml"));
        std::fs::write(&file, serde_yaml::to_string(&sale("borrowed", &ns, &clusters, 600)?)?)?;
        let plan = std::process::Command::new(env!("CARGO_BIN_EXE_flashsale-operator"))
            .args(["plan", "-f"])
            .arg(&file)
            .arg("--kubeconfig")
            .arg(&cluster.kubeconfig)
            .output()?;
        let printed = String::from_utf8_lossy(&plan.stdout);
        ensure!(plan.status.success(), "plan failed: {}", String::from_utf8_lossy(&plan.stderr));
        for (secret, field) in [("token-file", "tokenFile"), ("exec", "exec"), ("key-path", "client-key")] {
            let want = format!("preflight:  kubeconfig Secret {ns}/{secret}: users[0].user.{field} is not allowed");
            ensure!(printed.contains(&want), "plan does not say {want:?}:\n{printed}");
        }
        ensure!(!marker.exists(), "plan ran the kubeconfig's exec command");
        ensure!(tenants_server.accepted.load(Ordering::SeqCst) == 0, "plan connected to the tenant's server");
        let widened = widened_service_accounts(&admin, &ns, &elsewhere).await?;
        ensure!(widened.is_empty(), "rights beyond the namespace: {widened:?}");
        drop(operator);
        Ok(())
    })
}

/// With the installer's opt-in, exec plugins run, but a failing one's output reaches neither
/// status nor events; a plugin that never returns is cut off after the build timeout; and
/// neither it nor a cluster server that accepts and never answers delays another sale's phase.
fn allowed_exec_plugins_leak_no_output_and_hung_clusters_block_no_other_sale(env: &Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "tenant-kubeconfig-exec").await?;
        let as_tenant: Client = tenant(cluster, &admin, &ns).await?;
        let hung = listener()?;
        let server = format!("https://127.0.0.1:{}", hung.port);
        let leak = format!("plugin-output-{}", std::process::id());

        let failing = format!(
            "{{exec: {{apiVersion: client.authentication.k8s.io/v1, command: sh, args: ['-c', 'echo {leak}-stdout; echo {leak}-stderr >&2; exit 3']}}}}"
        );
        let sleeping = "{exec: {apiVersion: client.authentication.k8s.io/v1, command: sh, args: ['-c', 'sleep 25']}}";
        for (name, user) in [("failing", failing.as_str()), ("sleeping", sleeping), ("hung", "{token: abc}")] {
            kubeconfig_secret(&as_tenant, &ns, name, "kubeconfig", &kubeconfig(&server, user)).await?;
        }
        let sales: Api<FlashSale> = Api::namespaced(as_tenant.clone(), &ns);
        let stuck = sale("stuck", &ns, &[("failing", "failing"), ("sleeping", "sleeping"), ("hung", "hung")], 600)?;
        sales.create(&PostParams::default(), &stuck).await?;

        let mut operator = Operator::operator(cluster, &["--watch-namespace", &ns, "--allow-kubeconfig-exec"])?;
        operator.wait_ready(Duration::from_secs(30)).await?;
        // Created once the stuck sale's clients are being built: its Preparing boundary falls
        // while the sleeping plugin and the hung server are still holding the stuck sale.
        let on_time = sale("on-time", &ns, &[], 7)?;
        sales.create(&PostParams::default(), &on_time).await?;
        let prepare_at = on_time.spec.window.start.parse::<jiff::Timestamp>()? - jiff::SignedDuration::from_secs(4);
        eventually(Duration::from_secs(15), || async {
            Ok(sales.get("on-time").await?.status.and_then(|s| s.phase) == Some(Phase::Preparing))
        })
        .await
        .context("the other sale never reached Preparing")?;
        let lag = jiff::Timestamp::now().duration_since(prepare_at);
        ensure!(lag < jiff::SignedDuration::from_secs(5), "the other sale changed phase {lag} after its boundary");

        let shown =
            cluster_messages(&sales, "stuck", &["failing", "sleeping", "hung"], Duration::from_secs(40)).await?;
        ensure!(
            message_of(&shown, "failing")
                == format!("the kubeconfig in Secret {ns}/failing cannot be used: its exec plugin failed"),
            "{shown:?}"
        );
        ensure!(message_of(&shown, "sleeping").ends_with("building its client took longer than 10s"), "{shown:?}");
        ensure!(!message_of(&shown, "hung").is_empty(), "{shown:?}");
        ensure!(hung.accepted.load(Ordering::SeqCst) > 0, "the token kubeconfig never connected to its server");
        let status = serde_json::to_string(&sales.get("stuck").await?.status)?;
        let notes = format!("{:?}", events(&as_tenant, &ns, "stuck").await?);
        ensure!(!status.contains(&leak), "the plugin's output is in status: {status}");
        ensure!(!notes.contains(&leak), "the plugin's output is in events: {notes}");
        ensure!(!operator.log_text().contains(&format!("{leak}-stderr")), "the plugin wrote to the operator's stderr");
        operator.ensure_alive()?;
        drop(operator);
        Ok(())
    })
}
