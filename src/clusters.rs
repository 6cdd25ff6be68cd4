//! Clients for the clusters a sale spans: the operator's own cluster, or one per
//! `spec.clusters[]` entry built from its credentials Secret: a kubeconfig under a key, a
//! Cluster API kubeconfig Secret (key `value`), or an Argo CD cluster Secret (`server` and
//! `config`, translated into a kubeconfig by [`argocd`]).
//!
//! A credentials Secret is written by the sale's author, so it is data and nothing else: before
//! kube sees it ([`Config::from_custom_kubeconfig`] would read files and run commands), [`check`]
//! refuses every field that reads a file on the operator's disk or runs code in the operator
//! (exec plugins only when the installer opts in). Messages about a kubeconfig are fixed texts
//! chosen by the kind of failure, never text from kube, a plugin or the file.
//!
//! Clients are cached per Secret and rebuilt when the Secret's resourceVersion changes, so a
//! rotated kubeconfig takes effect at the next reconcile. Kubeconfig contents are never logged.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Config,
    config::{ExecInteractiveMode, KubeConfigOptions, Kubeconfig},
};
use std::{collections::HashMap, sync::Mutex, time::Duration};

use crate::{
    api::{CredentialsFormat, FlashSale, SecretKeyRef},
    metrics::Metrics,
    view::{Changed, View, ViewId},
};
use std::sync::Arc;
use tokio::sync::mpsc;

pub mod argocd;

/// The name under which the operator's own cluster appears in status.
pub const LOCAL: &str = "local";

/// Timeouts for remote clusters: an unreachable cluster must show in status within seconds and
/// never hold up the others for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest building one client may take. Only an exec plugin (when the installer allows
/// them) can make it slow; past this the sale's cluster shows as unusable and the reconcile
/// goes on (the plugin's thread is left to finish on its own).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(10);

/// What a sale's kubeconfig Secret may hold besides the cluster's address and CA data.
const CREDENTIALS_POLICY: &str = "kubeconfig Secrets may hold only inline credentials (token, client-certificate-data/client-key-data, username/password)";

/// Why a cluster of a sale has no client.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig holds something a sale's Secret may not: a file path or a command.
    #[error("{0}")]
    Refused(String),
    /// The Secret is missing or unusable, or no client could be built from it.
    #[error("{0}")]
    Unavailable(String),
}

/// One cluster of a sale, with a client or the reason there is none.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub client: Result<Client, ClusterError>,
    /// The watch caches of the cluster the client reaches (one per client, shared by the sales
    /// that use it).
    pub view: Option<Arc<View>>,
    /// The IANA zone the cluster's CronHPA controller runs in.
    pub cron_hpa_time_zone: String,
}

/// How long a client that could not be built (an exec plugin that failed or hung, say) stays
/// failed before it is tried again with the same Secret. Refusals and malformed Secrets stay
/// until the Secret changes: trying again cannot change their verdict.
const RETRY_AFTER: Duration = Duration::from_secs(60);

#[derive(Clone)]
struct Cached {
    resource_version: String,
    client: Result<Client, ClusterError>,
    view: Option<Arc<View>>,
    /// When a failure to build may be tried again (None: until the Secret changes).
    retry_at: Option<std::time::Instant>,
}

/// Builds and caches clients for sale clusters.
pub struct Clusters {
    local: Client,
    local_view: Arc<View>,
    /// Where the views announce what changed (the controller reconciles the sales that care).
    changes: Option<mpsc::UnboundedSender<Changed>>,
    /// The request budget of each cluster reached through a sale's Secret.
    budget: crate::client::Budget,
    /// The kubeconfig Secrets read since the controller's watch last saw them change.
    fresh: Arc<FreshSecrets>,
    cache: Mutex<HashMap<(String, String, String), Cached>>,
    metrics: std::sync::Arc<Metrics>,
    /// Whether kubeconfig Secrets may use exec plugins (the installer's `--allow-kubeconfig-exec`).
    allow_exec: bool,
}

impl Clusters {
    pub fn new(
        local: Client,
        metrics: std::sync::Arc<Metrics>,
        allow_exec: bool,
        changes: Option<mpsc::UnboundedSender<Changed>>,
        budget: crate::client::Budget,
    ) -> Self {
        let shown = Some((metrics.clone(), crate::metrics::cluster_label(LOCAL)));
        let local_view = View::with_metrics(ViewId::Local, local.clone(), changes.clone(), shown);
        let fresh = Arc::new(FreshSecrets::default());
        Clusters { local, local_view, changes, budget, fresh, cache: Mutex::new(HashMap::new()), metrics, allow_exec }
    }

    /// What the controller's Secret watch tells when a Secret changes (or goes).
    pub fn fresh_secrets(&self) -> Arc<FreshSecrets> {
        self.fresh.clone()
    }

    /// The operator's own cluster's view.
    pub fn local_view(&self) -> &Arc<View> {
        &self.local_view
    }

    /// The operator's own cluster's client.
    pub fn local(&self) -> &Client {
        &self.local
    }

    /// The clusters `sale` spans, each with a client or a message saying why not.
    pub async fn targets(&self, sale: &FlashSale, namespace: &str) -> Vec<Target> {
        if sale.spec.clusters.is_empty() {
            return vec![Target {
                name: LOCAL.into(),
                client: Ok(self.local.clone()),
                view: Some(self.local_view.clone()),
                cron_hpa_time_zone: sale.spec.cron_hpa_time_zone.clone(),
            }];
        }
        let mut targets = Vec::with_capacity(sale.spec.clusters.len());
        for cluster in &sale.spec.clusters {
            let (client, view) = self.client_for(namespace, &cluster.kubeconfig_secret_ref).await;
            targets.push(Target {
                name: cluster.name.clone(),
                client,
                view,
                cron_hpa_time_zone: cluster
                    .cron_hpa_time_zone
                    .clone()
                    .unwrap_or_else(|| sale.spec.cron_hpa_time_zone.clone()),
            });
        }
        targets
    }

    /// The client (and its view) built from a sale's kubeconfig Secret, cached until the Secret
    /// changes; a changed Secret gets a new client and a new view (the old one's watches stop
    /// when no pass holds it any more).
    async fn client_for(
        &self,
        namespace: &str,
        reference: &SecretKeyRef,
    ) -> (Result<Client, ClusterError>, Option<Arc<View>>) {
        let name = reference.name.as_str();
        let source = Source { namespace, name, format: reference.format, key: reference.kubeconfig_key() };
        let how = format!("{:?}/{}", source.format, source.key.unwrap_or_default());
        let cache_key = (namespace.to_owned(), name.to_owned(), how);
        // Unchanged since it was last read (the controller watches Secrets): no read at all.
        if self.fresh.is_fresh(namespace, name)
            && let Some(cached) = self.cached_any(&cache_key)
        {
            return (cached.client, cached.view);
        }
        // Marked before the read: a change the watch reports while it runs makes it stale again.
        self.fresh.mark(namespace, name);
        let secrets: Api<Secret> = Api::namespaced(self.local.clone(), namespace);
        let secret = match secrets.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                let message = format!("{} {source} not found", source.kind());
                return (Err(ClusterError::Unavailable(message)), None);
            }
            Err(err) => {
                let message = format!("cannot read {} {source}: {err}", source.kind());
                return (Err(ClusterError::Unavailable(message)), None);
            }
        };
        let resource_version = secret.metadata.resource_version.clone().unwrap_or_default();
        // The same Secret read another way is another client.
        if let Some(cached) = self.cached(&cache_key, &resource_version) {
            return (cached.client, cached.view);
        }
        let (client, transient) = match build_client(
            &secret,
            &source,
            self.allow_exec,
            &self.metrics,
            Some(self.budget),
            BUILD_TIMEOUT,
        )
        .await
        {
            Err(Built::Failed(err)) => (Err(err), true),
            Err(Built::Final(err)) => (Err(err), false),
            Ok(client) => (Ok(client), false),
        };
        let retry_at = transient.then(|| std::time::Instant::now() + RETRY_AFTER);
        let id = ViewId::Remote { namespace: namespace.to_owned(), secret: name.to_owned() };
        let shown = Some((self.metrics.clone(), crate::metrics::cluster_label(&format!("{namespace}/{name}"))));
        let view = client.as_ref().ok().map(|c| View::with_metrics(id, c.clone(), self.changes.clone(), shown));
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(cache_key, Cached { resource_version, client: client.clone(), view: view.clone(), retry_at });
        }
        (client, view)
    }

    /// The cached client of `key` whatever Secret version built it, unless a failed build may be
    /// tried again.
    fn cached_any(&self, key: &(String, String, String)) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache.get(key).filter(|c| c.retry_at.is_none_or(|at| std::time::Instant::now() < at)).cloned()
    }

    fn cached(&self, key: &(String, String, String), resource_version: &str) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(key)
            .filter(|c| c.resource_version == resource_version)
            .filter(|c| c.retry_at.is_none_or(|at| std::time::Instant::now() < at))
            .cloned()
    }
}

/// The kubeconfig Secrets (`namespace`, `name`) read since the controller's watch of Secrets
/// last reported a change of them: a pass uses the client it has without reading the Secret
/// again, and any change (or deletion) the watch reports makes the next pass read it.
#[derive(Default)]
pub struct FreshSecrets(Mutex<std::collections::HashSet<(String, String)>>);

impl FreshSecrets {
    fn is_fresh(&self, namespace: &str, name: &str) -> bool {
        self.0.lock().is_ok_and(|f| f.contains(&(namespace.to_owned(), name.to_owned())))
    }

    fn mark(&self, namespace: &str, name: &str) {
        if let Ok(mut fresh) = self.0.lock() {
            fresh.insert((namespace.to_owned(), name.to_owned()));
        }
    }

    /// The watch saw the Secret change or go.
    pub fn changed(&self, namespace: &str, name: &str) {
        if let Ok(mut fresh) = self.0.lock() {
            fresh.remove(&(namespace.to_owned(), name.to_owned()));
        }
    }
}

/// Where a kubeconfig came from, for messages.
struct Source<'a> {
    namespace: &'a str,
    name: &'a str,
    format: CredentialsFormat,
    /// The key holding the kubeconfig (None for an Argo CD cluster Secret, read by its keys).
    key: Option<&'a str>,
}

impl Source<'_> {
    /// What the Secret is, as messages name it.
    fn kind(&self) -> &'static str {
        match self.format {
            CredentialsFormat::Kubeconfig => "kubeconfig Secret",
            CredentialsFormat::ClusterApi => "Cluster API kubeconfig Secret",
            CredentialsFormat::ArgoCd => "Argo CD cluster Secret",
        }
    }
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A field of a kubeconfig that a sale's Secret may not hold, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The field's path in the kubeconfig, e.g. `users[0].user.exec`.
    pub field: String,
    /// Why the field is refused.
    pub why: String,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} is not allowed: {}", self.field, self.why)
    }
}

/// Checks a kubeconfig from a sale's Secret before kube may use it, returning the first field
/// that would make the operator read a file or run a command.
///
/// Refused: `exec` (unless `allow_exec`), `auth-provider` (kube's gcp provider runs `cmd-path`,
/// and oidc refreshes against an issuer the file names), `tokenFile` / `token-file`, and the path
/// forms `certificate-authority`, `client-certificate`, `client-key`; also `proxy-url` (the
/// operator connects to a sale's clusters directly; a proxy is not the installer's choice).
/// Allowed, because they are inert data: `server`, `certificate-authority-data`,
/// `insecure-skip-tls-verify`, `tls-server-name`, `token`, `client-*-data`, `username` /
/// `password`, `impersonate*` (bounded by the credential's own rights in that cluster) and
/// `extensions` (kube only ever passes a cluster's exec extension to an exec plugin).
pub fn check(kubeconfig: &Kubeconfig, allow_exec: bool) -> Result<(), Refusal> {
    let credentials = if allow_exec {
        format!("{CREDENTIALS_POLICY} or an exec plugin (the installer allows them with --allow-kubeconfig-exec)")
    } else {
        CREDENTIALS_POLICY.to_owned()
    };
    let refuse = |field: String, why: &str| Err(Refusal { field, why: why.to_owned() });
    for (i, named) in kubeconfig.clusters.iter().enumerate() {
        let Some(cluster) = &named.cluster else { continue };
        if cluster.certificate_authority.is_some() {
            return refuse(
                format!("clusters[{i}].cluster.certificate-authority"),
                "a kubeconfig Secret holds its CA inline as certificate-authority-data, never as a file path",
            );
        }
        if cluster.proxy_url.is_some() {
            return refuse(
                format!("clusters[{i}].cluster.proxy-url"),
                "the operator connects to a sale's clusters directly, not through a proxy",
            );
        }
    }
    for (i, named) in kubeconfig.auth_infos.iter().enumerate() {
        let Some(user) = &named.auth_info else { continue };
        let path = |field: &str| format!("users[{i}].user.{field}");
        if user.exec.is_some() && !allow_exec {
            return refuse(path("exec"), &credentials);
        }
        if user.auth_provider.is_some() {
            return refuse(path("auth-provider"), &credentials);
        }
        if user.token_file.is_some() {
            return refuse(path("tokenFile"), &credentials);
        }
        // kube reads only `tokenFile`, but client-go tools accept the dashed spelling too: a
        // Secret written for them must not look usable here.
        if user.other.contains_key("token-file") {
            return refuse(path("token-file"), &credentials);
        }
        if user.client_certificate.is_some() {
            return refuse(path("client-certificate"), &credentials);
        }
        if user.client_key.is_some() {
            return refuse(path("client-key"), &credentials);
        }
    }
    Ok(())
}

/// Makes an allowed exec plugin unable to reach the operator's terminal: it never inherits the
/// operator's stdin or stderr (kube inherits them unless the mode is `Never`).
fn sanitise(kubeconfig: &mut Kubeconfig) {
    for user in kubeconfig.auth_infos.iter_mut().filter_map(|u| u.auth_info.as_mut()) {
        if let Some(exec) = user.exec.as_mut() {
            exec.interactive_mode = Some(ExecInteractiveMode::Never);
        }
    }
}

/// Why [`build_client`] gave no client: a verdict on the Secret itself, or a failure while
/// building that may pass (an exec plugin, a timeout).
enum Built {
    Final(ClusterError),
    Failed(ClusterError),
}

impl From<ClusterError> for Built {
    fn from(err: ClusterError) -> Built {
        Built::Final(err)
    }
}

/// The text under `key` of `secret`, or why there is none (naming the keys it has instead).
fn text<'s>(secret: &'s Secret, source: &Source<'_>, key: &str) -> Result<&'s str, ClusterError> {
    let data = secret.data.as_ref();
    let Some(bytes) = data.and_then(|d| d.get(key)) else {
        let keys: Vec<&str> = data.map(|d| d.keys().map(String::as_str).collect()).unwrap_or_default();
        return Err(ClusterError::Unavailable(format!(
            "{} {source} has no key {key:?} (it has: {})",
            source.kind(),
            if keys.is_empty() { "no keys".to_owned() } else { keys.join(", ") }
        )));
    };
    std::str::from_utf8(&bytes.0)
        .map_err(|_| ClusterError::Unavailable(format!("key {key:?} of Secret {source} is not text")))
}

/// The checked kubeconfig a sale's credentials Secret stands for: read from its key, or
/// translated from an Argo CD cluster Secret. Nothing in it can read a file or (unless
/// `allow_exec`) run a command.
fn read_kubeconfig(secret: &Secret, source: &Source<'_>, allow_exec: bool) -> Result<Kubeconfig, ClusterError> {
    let refused =
        |refusal: &dyn std::fmt::Display| ClusterError::Refused(format!("{} {source}: {refusal}", source.kind()));
    let kubeconfig = match source.key {
        Some(key) => {
            // Parse errors can quote the input; only the error's kind is reported, never the contents.
            Kubeconfig::from_yaml(text(secret, source, key)?).map_err(|_| {
                ClusterError::Unavailable(format!("key {key:?} of Secret {source} is not a valid kubeconfig"))
            })?
        }
        None => {
            let (server, config) = (text(secret, source, "server")?, text(secret, source, "config")?);
            argocd::kubeconfig(server, config, allow_exec).map_err(|err| match err {
                argocd::Translation::Refused(refusal) => refused(&refusal),
                argocd::Translation::Malformed(why) => {
                    ClusterError::Unavailable(format!("{} {source} cannot be read: {why}", source.kind()))
                }
            })?
        }
    };
    check(&kubeconfig, allow_exec).map_err(|refusal| refused(&refusal))?;
    Ok(kubeconfig)
}

/// Reads, checks and turns into a client the credentials `secret` holds.
async fn build_client(
    secret: &Secret,
    source: &Source<'_>,
    allow_exec: bool,
    metrics: &std::sync::Arc<Metrics>,
    budget: Option<crate::client::Budget>,
    timeout: Duration,
) -> Result<Client, Built> {
    let mut kubeconfig = read_kubeconfig(secret, source, allow_exec)?;
    sanitise(&mut kubeconfig);
    let metrics = metrics.clone();
    // One Secret is one client: its requests are counted under the Secret's name.
    let cluster = format!("{}/{}", source.namespace, source.name);
    let format = source.format;
    let build = async move {
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|err| unusable(&err, format))?;
        config.connect_timeout = Some(CONNECT_TIMEOUT);
        // No read timeout: the cluster's view holds watches that are silent while nothing
        // changes. A server that stops answering is bounded by each pass's deadline, the
        // view's sync timeout and its liveness probe instead.
        config.read_timeout = None;
        // An allowed exec plugin runs while the client is built, synchronously: off the
        // reconcile's worker thread.
        tokio::task::spawn_blocking(move || crate::client::counted(config, metrics, &cluster, budget))
            .await
            .map_err(|_| "building the client failed")?
            .map_err(|err| client_failure(&err))
    };
    let failed = |why: String| {
        Built::Failed(ClusterError::Unavailable(match source.format {
            CredentialsFormat::ArgoCd => format!("the credentials in {} {source} cannot be used: {why}", source.kind()),
            _ => format!("the kubeconfig in Secret {source} cannot be used: {why}"),
        }))
    };
    match tokio::time::timeout(timeout, build).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(why)) => Err(failed(why.to_owned())),
        Err(_) => Err(failed(format!("building its client took longer than {timeout:?}"))),
    }
}

/// A fixed description of why kube could not read a (checked) kubeconfig, naming the fields as
/// the Secret's format spells them. kube's own messages can quote the file's contents, so only
/// the kind is told.
fn unusable(err: &kube::config::KubeconfigError, format: CredentialsFormat) -> &'static str {
    use kube::config::KubeconfigError as E;
    if format == CredentialsFormat::ArgoCd {
        return match err {
            E::MissingClusterUrl => "its server is empty",
            E::ParseClusterUrl(_) => "its server is not a URL",
            E::LoadCertificateAuthority(_) | E::ParseCertificates(_) => {
                "its config.tlsClientConfig.caData is not base64-encoded PEM certificates"
            }
            E::LoadClientCertificate(_) => "its config.tlsClientConfig.certData is not base64-encoded PEM",
            E::LoadClientKey(_) => "its config.tlsClientConfig.keyData is not base64-encoded PEM",
            _ => "kube cannot load it",
        };
    }
    match err {
        E::CurrentContextNotSet | E::LoadContext(_) => "its current-context names no context in the file",
        E::LoadClusterOfContext(_) => "its context names no cluster in the file",
        E::MissingClusterUrl => "its cluster has no server",
        E::ParseClusterUrl(_) => "its server is not a URL",
        E::LoadCertificateAuthority(_) | E::ParseCertificates(_) => {
            "its certificate-authority-data is not base64-encoded PEM certificates"
        }
        E::LoadClientCertificate(_) => "its client-certificate-data is not base64-encoded PEM",
        E::LoadClientKey(_) => "its client-key-data is not base64-encoded PEM",
        _ => "kube cannot load it",
    }
}

/// A fixed description of why no client could be built. What an exec plugin printed (kube puts
/// it into the error) must not reach status or events, so only the kind is told.
fn client_failure(err: &kube::Error) -> &'static str {
    match err {
        kube::Error::Auth(kube::client::AuthError::AuthExecStart(_)) => "its exec plugin could not be started",
        kube::Error::Auth(kube::client::AuthError::AuthExecRun { .. }) => "its exec plugin failed",
        kube::Error::Auth(
            kube::client::AuthError::AuthExecParse(_)
            | kube::client::AuthError::ExecPluginFailed
            | kube::client::AuthError::MalformedTokenExpirationDate(_),
        ) => "its exec plugin did not print a usable ExecCredential",
        kube::Error::Auth(_) => "its credentials are not usable",
        _ => "its TLS settings or credentials are not usable",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    /// A kubeconfig with one cluster and one user, each given as a YAML flow mapping.
    fn kubeconfig(cluster: &str, user: &str) -> Kubeconfig {
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {cluster}}}]\n\
             users: [{{name: u, user: {user}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
        );
        Kubeconfig::from_yaml(&text).unwrap()
    }

    const SERVER: &str = "{server: 'https://127.0.0.1:6443', certificate-authority-data: 'Q0E='}";

    #[test]
    fn only_inline_data_passes() {
        // (cluster, user, refused field without exec allowed, refused field with exec allowed)
        let table: &[(&str, &str, Option<&str>, Option<&str>)] = &[
            (SERVER, "{token: abc}", None, None),
            (SERVER, "{username: a, password: b}", None, None),
            (SERVER, "{client-certificate-data: Q0VSVA==, client-key-data: S0VZ}", None, None),
            (SERVER, "{token: abc, as: someone}", None, None),
            (
                "{server: 'https://x:6443', insecure-skip-tls-verify: true, tls-server-name: x}",
                "{token: a}",
                None,
                None,
            ),
            (
                "{server: 'https://x', extensions: [{name: client.authentication.k8s.io/exec, extension: {a: b}}]}",
                "{token: a}",
                None,
                None,
            ),
            (
                SERVER,
                "{exec: {apiVersion: client.authentication.k8s.io/v1, command: sh}}",
                Some("users[0].user.exec"),
                None,
            ),
            (
                SERVER,
                "{auth-provider: {name: gcp, config: {cmd-path: /bin/sh}}}",
                Some("users[0].user.auth-provider"),
                Some("users[0].user.auth-provider"),
            ),
            (
                SERVER,
                "{tokenFile: /var/run/secrets/token}",
                Some("users[0].user.tokenFile"),
                Some("users[0].user.tokenFile"),
            ),
            (
                SERVER,
                "{token-file: /var/run/secrets/token}",
                Some("users[0].user.token-file"),
                Some("users[0].user.token-file"),
            ),
            (SERVER, "{token: a, tokenFile: /t}", Some("users[0].user.tokenFile"), Some("users[0].user.tokenFile")),
            (
                SERVER,
                "{client-certificate: /c.pem, client-key-data: S0VZ}",
                Some("users[0].user.client-certificate"),
                Some("users[0].user.client-certificate"),
            ),
            (
                SERVER,
                "{client-certificate-data: Q0VSVA==, client-key: /k.pem}",
                Some("users[0].user.client-key"),
                Some("users[0].user.client-key"),
            ),
            (
                "{server: 'https://x', certificate-authority: /etc/ca.crt}",
                "{token: a}",
                Some("clusters[0].cluster.certificate-authority"),
                Some("clusters[0].cluster.certificate-authority"),
            ),
            (
                "{server: 'https://x', proxy-url: 'http://10.0.0.1:3128'}",
                "{token: a}",
                Some("clusters[0].cluster.proxy-url"),
                Some("clusters[0].cluster.proxy-url"),
            ),
            // An exec plugin that also names a token file: the file is refused even when exec is allowed.
            (
                SERVER,
                "{exec: {command: sh}, tokenFile: /t}",
                Some("users[0].user.exec"),
                Some("users[0].user.tokenFile"),
            ),
        ];
        for (cluster, user, refused, refused_with_exec) in table {
            let config = kubeconfig(cluster, user);
            for (allow_exec, expected) in [(false, refused), (true, refused_with_exec)] {
                let verdict = check(&config, allow_exec).err().map(|r| r.field);
                assert_eq!(verdict.as_deref(), *expected, "cluster {cluster}, user {user}, allow_exec {allow_exec}");
            }
        }
    }

    #[test]
    fn every_user_is_checked_not_only_the_current_one() {
        let mut config = kubeconfig(SERVER, "{token: a}");
        let mut second = config.auth_infos[0].clone();
        second.name = "spare".into();
        second.auth_info.as_mut().unwrap().token_file = Some("/t".into());
        config.auth_infos.push(second);
        let refusal = check(&config, false).unwrap_err();
        assert_eq!(refusal.to_string(), format!("users[1].user.tokenFile is not allowed: {CREDENTIALS_POLICY}"));
    }

    fn secret(kubeconfig: &str) -> Secret {
        Secret {
            data: Some([("kubeconfig".to_owned(), ByteString(kubeconfig.as_bytes().to_vec()))].into()),
            ..Secret::default()
        }
    }

    const SOURCE: Source<'static> = Source {
        namespace: "shop",
        name: "ack-hangzhou",
        format: CredentialsFormat::Kubeconfig,
        key: Some("kubeconfig"),
    };

    async fn build(text: &str, allow_exec: bool) -> Result<Client, ClusterError> {
        build_within(text, allow_exec, BUILD_TIMEOUT).await
    }

    async fn build_within(text: &str, allow_exec: bool, timeout: Duration) -> Result<Client, ClusterError> {
        build_client(&secret(text), &SOURCE, allow_exec, &std::sync::Arc::new(Metrics::default()), None, timeout)
            .await
            .map_err(|built| match built {
                Built::Final(err) | Built::Failed(err) => err,
            })
    }

    fn exec_kubeconfig(script: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: 'https://127.0.0.1:1'}}}}]\n\
             users: [{{name: u, user: {{exec: {{apiVersion: client.authentication.k8s.io/v1, command: sh, args: ['-c', {script:?}]}}}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
        )
    }

    #[tokio::test]
    async fn a_refused_kubeconfig_names_secret_and_field_and_runs_nothing() {
        let marker = std::env::temp_dir().join(format!("flashsale-exec-marker-{}", std::process::id()));
        let _ = std::fs::remove_file(&marker);
        let text = exec_kubeconfig(&format!("touch {}", marker.display()));
        let Err(ClusterError::Refused(message)) = build(&text, false).await else { panic!("exec was not refused") };
        assert_eq!(
            message,
            format!("kubeconfig Secret shop/ack-hangzhou: users[0].user.exec is not allowed: {CREDENTIALS_POLICY}")
        );
        assert!(!marker.exists(), "the exec plugin ran");
    }

    #[tokio::test]
    async fn an_allowed_exec_plugin_that_fails_shows_none_of_its_output() {
        let text = exec_kubeconfig("echo plugin-secret-stdout; echo plugin-secret-stderr >&2; exit 3");
        let Err(ClusterError::Unavailable(message)) = build(&text, true).await else { panic!("expected a failure") };
        assert_eq!(message, "the kubeconfig in Secret shop/ack-hangzhou cannot be used: its exec plugin failed");
    }

    #[tokio::test]
    async fn an_allowed_exec_plugin_that_never_returns_is_cut_off() {
        let text = exec_kubeconfig("sleep 3");
        let started = std::time::Instant::now();
        let within = Duration::from_millis(300);
        let Err(ClusterError::Unavailable(message)) = build_within(&text, true, within).await else {
            panic!("expected a failure")
        };
        assert!(message.ends_with("building its client took longer than 300ms"), "{message}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn kube_errors_are_told_by_kind_never_by_content() {
        let text = "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{name: k, cluster: {server: 'https://x', certificate-authority-data: 'not-base64-SECRETISH'}}]\n\
             users: [{name: u, user: {token: a}}]\n\
             contexts: [{name: c, context: {cluster: k, user: u}}]\n";
        let Err(ClusterError::Unavailable(message)) = build(text, false).await else { panic!("expected a failure") };
        assert_eq!(
            message,
            "the kubeconfig in Secret shop/ack-hangzhou cannot be used: its certificate-authority-data is not base64-encoded PEM certificates"
        );
        let Err(ClusterError::Unavailable(message)) = build("users: [SECRETISH", false).await else { panic!() };
        assert!(!message.contains("SECRETISH"), "{message}");
    }

    #[tokio::test]
    async fn failed_builds_are_tried_again_and_verdicts_are_kept_until_the_secret_changes() {
        let local = Client::try_from(Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
        let clusters = Clusters::new(local, std::sync::Arc::new(Metrics::default()), false, None, Default::default());
        let key = |name: &str| ("shop".to_owned(), name.to_owned(), "kubeconfig".to_owned());
        let past = std::time::Instant::now() - Duration::from_secs(1);
        let later = std::time::Instant::now() + RETRY_AFTER;
        let entries = [
            ("refused", None, ClusterError::Refused("r".into())),
            ("plugin-failed", Some(past), ClusterError::Unavailable("f".into())),
            ("plugin-failed-recently", Some(later), ClusterError::Unavailable("f".into())),
        ];
        for (name, retry_at, err) in entries {
            let cached = Cached { resource_version: "1".into(), client: Err(err), view: None, retry_at };
            clusters.cache.lock().unwrap().insert(key(name), cached);
        }
        assert!(clusters.cached(&key("refused"), "1").is_some());
        assert!(clusters.cached(&key("refused"), "2").is_none(), "a changed Secret is read again");
        assert!(clusters.cached(&key("plugin-failed"), "1").is_none(), "a failed build is tried again");
        assert!(clusters.cached(&key("plugin-failed-recently"), "1").is_some(), "but not at every pass");
    }

    fn secret_with(data: &[(&str, &str)]) -> Secret {
        let data = data.iter().map(|(k, v)| ((*k).to_owned(), ByteString(v.as_bytes().to_vec())));
        Secret { data: Some(data.collect()), ..Secret::default() }
    }

    fn source(format: CredentialsFormat, key: Option<&'static str>) -> Source<'static> {
        Source { namespace: "shop", name: "edge", format, key }
    }

    const INLINE: &str = "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
         clusters: [{name: k, cluster: {server: 'https://127.0.0.1:6443'}}]\n\
         users: [{name: u, user: {token: abc}}]\n\
         contexts: [{name: c, context: {cluster: k, user: u}}]\n";

    #[test]
    fn each_format_reads_its_own_keys() {
        let reference = |format: CredentialsFormat, key: Option<&str>| SecretKeyRef {
            name: "edge".into(),
            key: key.map(str::to_owned),
            format,
        };
        assert_eq!(reference(CredentialsFormat::Kubeconfig, None).kubeconfig_key(), Some("kubeconfig"));
        assert_eq!(reference(CredentialsFormat::Kubeconfig, Some("admin.conf")).kubeconfig_key(), Some("admin.conf"));
        assert_eq!(reference(CredentialsFormat::ClusterApi, None).kubeconfig_key(), Some("value"));
        assert_eq!(reference(CredentialsFormat::ArgoCd, None).kubeconfig_key(), None);

        let capi = source(CredentialsFormat::ClusterApi, Some("value"));
        assert!(read_kubeconfig(&secret_with(&[("value", INLINE)]), &capi, false).is_ok());
        let Err(ClusterError::Unavailable(message)) =
            read_kubeconfig(&secret_with(&[("kubeconfig", INLINE)]), &capi, false)
        else {
            panic!("a Secret without `value` was read")
        };
        assert_eq!(message, "Cluster API kubeconfig Secret shop/edge has no key \"value\" (it has: kubeconfig)");

        let argo = source(CredentialsFormat::ArgoCd, None);
        let secret = secret_with(&[
            ("name", "edge"),
            ("server", "https://127.0.0.1:6443"),
            ("config", r#"{"bearerToken": "t"}"#),
        ]);
        let kubeconfig = read_kubeconfig(&secret, &argo, false).unwrap();
        let server = kubeconfig.clusters[0].cluster.as_ref().and_then(|c| c.server.clone());
        assert_eq!(server.as_deref(), Some("https://127.0.0.1:6443"));
        let Err(ClusterError::Unavailable(message)) =
            read_kubeconfig(&secret_with(&[("server", "https://127.0.0.1:6443")]), &argo, false)
        else {
            panic!("a Secret without `config` was read")
        };
        assert_eq!(message, "Argo CD cluster Secret shop/edge has no key \"config\" (it has: server)");
    }

    #[test]
    fn the_same_rules_hold_for_every_format() {
        let exec = exec_kubeconfig("true");
        let capi = source(CredentialsFormat::ClusterApi, Some("value"));
        let Err(ClusterError::Refused(message)) = read_kubeconfig(&secret_with(&[("value", &exec)]), &capi, false)
        else {
            panic!("exec in a Cluster API Secret was not refused")
        };
        assert_eq!(
            message,
            format!("Cluster API kubeconfig Secret shop/edge: users[0].user.exec is not allowed: {CREDENTIALS_POLICY}")
        );
        let argo = source(CredentialsFormat::ArgoCd, None);
        let config = r#"{"execProviderConfig": {"command": "sh", "args": ["-c", "true"]}}"#;
        let secret = secret_with(&[("server", "https://127.0.0.1:1"), ("config", config)]);
        let Err(ClusterError::Refused(message)) = read_kubeconfig(&secret, &argo, false) else {
            panic!("an Argo CD exec provider was not refused")
        };
        assert_eq!(
            message,
            format!(
                "Argo CD cluster Secret shop/edge: config.execProviderConfig is not allowed: {}",
                argocd::CREDENTIALS_POLICY
            )
        );
        let kubeconfig = read_kubeconfig(&secret, &argo, true).unwrap();
        assert!(
            kubeconfig.auth_infos[0].auth_info.as_ref().is_some_and(|u| u.exec.is_some()),
            "allowed: an exec plugin"
        );
        let Err(ClusterError::Unavailable(message)) =
            read_kubeconfig(&secret_with(&[("server", "x"), ("config", "{SECRETISH")]), &argo, false)
        else {
            panic!("malformed config was read")
        };
        assert_eq!(message, "Argo CD cluster Secret shop/edge cannot be read: its key \"config\" is not JSON");
    }

    #[tokio::test]
    async fn an_allowed_argo_exec_provider_runs_as_an_exec_plugin_and_its_output_stays_out() {
        let argo = source(CredentialsFormat::ArgoCd, None);
        let config = r#"{"execProviderConfig": {"command": "sh", "args": ["-c", "echo SECRETISH; exit 3"]}}"#;
        let secret = secret_with(&[("server", "https://127.0.0.1:1"), ("config", config)]);
        let built =
            build_client(&secret, &argo, true, &std::sync::Arc::new(Metrics::default()), None, BUILD_TIMEOUT).await;
        let Err(Built::Failed(ClusterError::Unavailable(message))) = built else { panic!("expected a failed plugin") };
        assert_eq!(
            message,
            "the credentials in Argo CD cluster Secret shop/edge cannot be used: its exec plugin failed"
        );
    }

    #[tokio::test]
    async fn argo_pem_errors_name_argo_fields() {
        let argo = source(CredentialsFormat::ArgoCd, None);
        // Base64 of a PEM block whose body is not base64.
        let config = r#"{"tlsClientConfig": {"caData": "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCiEhISEKLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQo="}}"#;
        let secret = secret_with(&[("server", "https://127.0.0.1:1"), ("config", config)]);
        let built =
            build_client(&secret, &argo, false, &std::sync::Arc::new(Metrics::default()), None, BUILD_TIMEOUT).await;
        let Err(Built::Failed(ClusterError::Unavailable(message))) = built else { panic!("expected a failure") };
        assert_eq!(
            message,
            "the credentials in Argo CD cluster Secret shop/edge cannot be used: its config.tlsClientConfig.caData is not base64-encoded PEM certificates"
        );
    }
}
