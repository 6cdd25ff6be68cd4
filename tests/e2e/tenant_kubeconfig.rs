//! What a tenant's Secrets and URLs can make the operator reach, tried as the tenant.
//!
//! Kubeconfig Secrets are data: a Secret that names a file on the operator's disk or a command
//! to run is refused before any client exists (no request leaves the operator, no command runs),
//! the refusal names the field in status and in an Event; with the installer's
//! `--allow-kubeconfig-exec`, a failing plugin's output stays out of status and events, and a
//! plugin or a server that never answers holds up no other sale.
//!
//! Prometheus URLs go only where the installer allows; a real Prometheus behind TLS and basic
//! auth flips a breaker with the sale's credentials and CA, and a wrong password or an
//! untrusted certificate shows in general terms only.

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
    (
        "tenant_kubeconfig::prometheus_is_queried_only_where_the_installer_allows_with_the_sales_auth_and_ca",
        prometheus_is_queried_only_where_the_installer_allows_with_the_sales_auth_and_ca,
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
        std::fs::write(&file, serde_saphyr::to_string(&sale("borrowed", &ns, &clusters, 600)?)?)?;
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

/// bcrypt of `right-password` (Prometheus' `basic_auth_users` wants bcrypt; made once with
/// Python's `crypt.crypt("right-password", crypt.mksalt(crypt.METHOD_BLOWFISH))`).
const RIGHT_PASSWORD_BCRYPT: &str = "$2b$12$q.UpwmjLIY/buq/o0hwoweFJ3BIW7KIplUUfl1YP3CXZEES9Z1odC";

/// A CA of the test's own (no system root trusts it) and a serving certificate for 127.0.0.1:
/// (CA PEM, certificate PEM, key PEM).
fn tls_for_loopback() -> anyhow::Result<(String, String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "tenant-prometheus-ca");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca_pem = ca.self_signed(&ca_key)?.pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?.signed_by(&key, &issuer)?;
    Ok((ca_pem, cert.pem(), key.serialize_pem()))
}

/// A sale `name` whose one flag `reviews` opens when `shop_latency_seconds` stays above 0.5 for
/// 2s, querying `prometheus`; Preparing 2s from now.
fn breaker_sale(name: &str, ns: &str, prometheus: serde_json::Value) -> anyhow::Result<FlashSale> {
    let mut sale = sale(name, ns, &[], 6)?;
    sale.spec.degradation = Some(serde_json::from_value(serde_json::json!({
        "configMapName": format!("{name}-flags"),
        "prometheus": prometheus,
        "flags": [{"name": "reviews", "autoDegrade": {"query": "shop_latency_seconds", "above": 0.5, "for": "2s"}}],
    }))?);
    Ok(sale)
}

/// The outbound half of the issue: a sale's Prometheus URL was a request to any address the
/// tenant named, with the answer echoed into status. Now only in-cluster names and the
/// installer's entries are queried; a real Prometheus with TLS (a CA of its own) and basic auth
/// flips the breaker with the sale's Secrets; a wrong password shows as "HTTP 401", a CA that is
/// not given as an untrusted certificate, a URL outside the list as the installer's list by
/// flag name, told once in an Event, and that address never sees a connection.
fn prometheus_is_queried_only_where_the_installer_allows_with_the_sales_auth_and_ca(env: &Env) -> anyhow::Result<()> {
    use crate::flags::{Exporter, Prometheus, flag_status, web};
    let cluster = env.primary()?;
    let exporter = Exporter::start(0.9)?;
    let scratch = tempfile::tempdir()?;
    let (ca, cert, key) = tls_for_loopback()?;
    std::fs::write(scratch.path().join("server.crt"), &cert)?;
    std::fs::write(scratch.path().join("server.key"), &key)?;
    let web_config = scratch.path().join("web.yml");
    std::fs::write(
        &web_config,
        format!(
            "tls_server_config: {{cert_file: {}, key_file: {}}}\nbasic_auth_users: {{shop: '{RIGHT_PASSWORD_BCRYPT}'}}\n",
            scratch.path().join("server.crt").display(),
            scratch.path().join("server.key").display()
        ),
    )?;
    let prometheus = Prometheus::start_with(&scratch.path().join("prometheus"), exporter.port, Some(web_config))?;
    let url = prometheus.url();
    ensure!(url.starts_with("https://"), "{url}");
    let internal = listener()?;
    let internal_url = format!("http://127.0.0.1:{}", internal.port);
    block_on(async {
        let admin = client(cluster).await?;
        let ns = namespace(&admin, "tenant-prometheus").await?;
        let as_tenant = tenant(cluster, &admin, &ns).await?;
        web(&admin, &ns).await?;
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(as_tenant.clone(), &ns);
        for (name, data) in [
            ("prom-basic", serde_json::json!({"username": "shop", "password": "right-password"})),
            ("prom-wrong", serde_json::json!({"username": "shop", "password": "wrong-password"})),
            ("prom-ca", serde_json::json!({"ca.crt": ca})),
        ] {
            let secret = serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "stringData": data}))?;
            secrets.create(&PostParams::default(), &secret).await?;
        }
        let mut operator =
            Operator::operator(cluster, &["--watch-namespace", &ns, "--prometheus-url-allow", url.as_str()])?;
        operator.wait_ready(Duration::from_secs(30)).await?;
        let sales: Api<FlashSale> = Api::namespaced(as_tenant.clone(), &ns);
        let ca_ref = serde_json::json!({"name": "prom-ca", "key": "ca.crt"});
        for (name, prometheus) in [
            (
                "guarded",
                serde_json::json!({"url": url, "auth": {"basicAuthSecretRef": {"name": "prom-basic"}}, "caSecretRef": ca_ref}),
            ),
            (
                "wrong",
                serde_json::json!({"url": url, "auth": {"basicAuthSecretRef": {"name": "prom-wrong"}}, "caSecretRef": ca_ref}),
            ),
            ("untrusted", serde_json::json!({"url": url, "auth": {"basicAuthSecretRef": {"name": "prom-basic"}}})),
            ("internal", serde_json::json!({"url": internal_url})),
        ] {
            sales.create(&PostParams::default(), &breaker_sale(name, &ns, prometheus)?).await?;
        }

        let reason = |name: &'static str| {
            let sales = sales.clone();
            async move {
                let sale = sales.get(name).await?;
                anyhow::Ok(flag_status(&sale, "local", "reviews").map(|f| (f.enabled, f.reason)))
            }
        };
        let want_wrong =
            format!("QueryFailed: Prometheus at {url} answered HTTP 401 (check degradation.prometheus.auth)");
        let want_untrusted = format!(
            "QueryFailed: cannot reach Prometheus at {url}: TLS handshake failed: its certificate is not trusted or not valid for the host (see degradation.prometheus.caSecretRef)"
        );
        let want_internal = format!(
            "QueryFailed: degradation.prometheus.url {internal_url} is not allowed by the installer's list (--prometheus-url-allow): only in-cluster Service names, http(s)://<service>.<namespace>[.svc[.cluster.local]][:port], and the origins the installer lists there may be queried"
        );
        let all = || async {
            anyhow::Ok([
                reason("guarded").await?,
                reason("wrong").await?,
                reason("untrusted").await?,
                reason("internal").await?,
            ])
        };
        let waited = eventually(Duration::from_secs(40), || async {
            let [guarded, wrong, untrusted, internal] = all().await?;
            Ok(guarded == Some((false, "BreakerOpen".into()))
                && wrong.is_some_and(|(_, r)| r == want_wrong)
                && untrusted.is_some_and(|(_, r)| r == want_untrusted)
                && internal.is_some_and(|(_, r)| r == want_internal))
        })
        .await;
        if let Err(err) = waited {
            anyhow::bail!("{err:#}; flags shown: {:?}", all().await?);
        }
        // A few evaluations later: the address outside the list never saw a connection, and the
        // tenant was told once.
        tokio::time::sleep(Duration::from_secs(3)).await;
        ensure!(internal.accepted.load(Ordering::SeqCst) == 0, "the operator connected to {internal_url}");
        let told = events(&as_tenant, &ns, "internal").await?;
        let failures: Vec<_> = told.iter().filter(|(reason, _)| reason == "FlagQueryFailed").collect();
        ensure!(failures.len() == 1, "FlagQueryFailed events for the refused URL: {told:?}");
        ensure!(failures[0].1.contains("--prometheus-url-allow"), "{told:?}");
        // Prometheus answers 401 with a body of its own; none of it is shown.
        let wrong = serde_json::to_string(&sales.get("wrong").await?.status)?;
        ensure!(!wrong.to_ascii_lowercase().contains("unauthorized"), "the 401 body is in status: {wrong}");
        operator.ensure_alive()?;
        drop(operator);
        Ok(())
    })
}
