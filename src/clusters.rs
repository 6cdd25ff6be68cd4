//! Clients for the clusters a sale spans: the operator's own cluster, or one per
//! `spec.clusters[]` entry built from its kubeconfig Secret.
//!
//! Clients are cached per Secret and rebuilt when the Secret's resourceVersion changes, so a
//! rotated kubeconfig takes effect at the next reconcile. Kubeconfig contents are never logged.

use k8s_openapi::api::core::v1::Secret;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};
use std::{collections::HashMap, sync::Mutex, time::Duration};

use crate::{api::FlashSale, metrics::Metrics};

/// The name under which the operator's own cluster appears in status.
pub const LOCAL: &str = "local";

/// Timeouts for remote clusters: an unreachable cluster must show in status within seconds and
/// never hold up the others for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(8);

/// One cluster of a sale, with a client or the reason there is none.
#[derive(Clone)]
pub struct Target {
    pub name: String,
    pub client: Result<Client, String>,
    /// The IANA zone the cluster's CronHPA controller runs in.
    pub cron_hpa_time_zone: String,
}

#[derive(Clone)]
struct Cached {
    resource_version: String,
    client: Result<Client, String>,
}

/// Builds and caches clients for sale clusters.
pub struct Clusters {
    local: Client,
    cache: Mutex<HashMap<(String, String, String), Cached>>,
    metrics: std::sync::Arc<Metrics>,
}

impl Clusters {
    pub fn new(local: Client, metrics: std::sync::Arc<Metrics>) -> Self {
        Clusters { local, cache: Mutex::new(HashMap::new()), metrics }
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
                cron_hpa_time_zone: sale.spec.cron_hpa_time_zone.clone(),
            }];
        }
        let mut targets = Vec::with_capacity(sale.spec.clusters.len());
        for cluster in &sale.spec.clusters {
            let secret = &cluster.kubeconfig_secret_ref;
            targets.push(Target {
                name: cluster.name.clone(),
                client: self.client_for(namespace, &secret.name, &secret.key).await,
                cron_hpa_time_zone: cluster
                    .cron_hpa_time_zone
                    .clone()
                    .unwrap_or_else(|| sale.spec.cron_hpa_time_zone.clone()),
            });
        }
        targets
    }

    async fn client_for(&self, namespace: &str, name: &str, key: &str) -> Result<Client, String> {
        let secrets: Api<Secret> = Api::namespaced(self.local.clone(), namespace);
        let secret = match secrets.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return Err(format!("kubeconfig Secret {namespace}/{name} not found")),
            Err(err) => {
                return Err(format!("cannot read kubeconfig Secret {namespace}/{name}: {err}"));
            }
        };
        let resource_version = secret.metadata.resource_version.clone().unwrap_or_default();
        let cache_key = (namespace.to_owned(), name.to_owned(), key.to_owned());
        if let Some(cached) = self.cached(&cache_key, &resource_version) {
            return cached;
        }
        let client = build_client(&secret, namespace, name, key, &self.metrics).await;
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(cache_key, Cached { resource_version, client: client.clone() });
        }
        client
    }

    fn cached(&self, key: &(String, String, String), resource_version: &str) -> Option<Result<Client, String>> {
        let cache = self.cache.lock().ok()?;
        cache.get(key).filter(|c| c.resource_version == resource_version).map(|c| c.client.clone())
    }
}

async fn build_client(
    secret: &Secret,
    namespace: &str,
    name: &str,
    key: &str,
    metrics: &std::sync::Arc<Metrics>,
) -> Result<Client, String> {
    let data = secret.data.as_ref();
    let Some(bytes) = data.and_then(|d| d.get(key)) else {
        let keys: Vec<&str> = data.map(|d| d.keys().map(String::as_str).collect()).unwrap_or_default();
        return Err(format!(
            "kubeconfig Secret {namespace}/{name} has no key {key:?} (it has: {})",
            if keys.is_empty() { "no keys".to_owned() } else { keys.join(", ") }
        ));
    };
    let text =
        std::str::from_utf8(&bytes.0).map_err(|_| format!("key {key:?} of Secret {namespace}/{name} is not text"))?;
    // Parse errors can quote the input; only the error's kind is reported, never the contents.
    let kubeconfig = Kubeconfig::from_yaml(text)
        .map_err(|_| format!("key {key:?} of Secret {namespace}/{name} is not a valid kubeconfig"))?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|err| format!("the kubeconfig in Secret {namespace}/{name} cannot be used: {err}"))?;
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    crate::client::counted(config, metrics.clone())
        .map_err(|err| format!("cannot build a client from Secret {namespace}/{name}: {err}"))
}
