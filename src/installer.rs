//! What the operator's installer decides, never a sale's author: the settings that widen what a
//! sale may make the operator do (which images agents run, where they may run, which addresses
//! the operator may call). They come from operator flags (the chart's values set them) and
//! reach every lever through the pass.

/// The installer's settings, as operator flags (each also an environment variable).
#[derive(clap::Args, Clone, Debug)]
pub struct Installer {
    /// The image of the spot-drain agents the operator deploys (its own image, which holds the
    /// `flashsale-drain-agent` binary).
    #[arg(long, default_value = concat!("flashsale-operator:", env!("CARGO_PKG_VERSION")), env = "FLASHSALE_AGENT_IMAGE")]
    pub agent_image: String,

    /// A ServiceAccount (besides the namespace's `default`) that a sale's warm-up Jobs may run
    /// as; repeat the flag, or separate names with commas. Each name widens what a sale's
    /// author can run: a warm-up pod gets that account's rights in the sale's namespace (an
    /// account of that name in any sale's namespace). Default: none, warm-up pods run as
    /// `default`.
    #[arg(long = "warmup-service-account", env = "FLASHSALE_WARMUP_SERVICE_ACCOUNTS", value_delimiter = ',')]
    pub warmup_service_accounts: Vec<String>,

    /// Lets kubeconfig Secrets of sales use exec credential plugins (a managed cluster's IAM
    /// plugin). Off by default, and a real widening: whoever may write a kubeconfig Secret in a
    /// namespace with sales then runs any command inside the operator, with the operator's
    /// filesystem (its own ServiceAccount token), network and environment. Token files and other
    /// file paths stay refused either way.
    #[arg(long, env = "FLASHSALE_ALLOW_KUBECONFIG_EXEC")]
    pub allow_kubeconfig_exec: bool,

    /// Prometheus origins sales may query besides in-cluster Service names (always allowed:
    /// `http(s)://<service>.<namespace>[.svc[.cluster.local]][:port]`). Each entry is an exact
    /// origin, `http(s)://host[:port]`, repeatable or comma-separated. Listing one widens what a
    /// sale's author can make the operator call: IP literals, loopback, link-local (the cloud
    /// metadata address) and outside names are reachable only when listed here.
    #[arg(
        long = "prometheus-url-allow",
        env = "FLASHSALE_PROMETHEUS_URL_ALLOW",
        value_delimiter = ',',
        value_parser = crate::levers::flags::prometheus::Origin::parse,
    )]
    pub prometheus_url_allow: Vec<crate::levers::flags::prometheus::Origin>,

    /// The namespaces whose Secrets the operator reads (the kubeconfig Secrets of sales'
    /// `spec.clusters`), comma-separated. Empty (the default) means every namespace, which needs
    /// a cluster-wide right to read Secrets; listing the namespaces sales live in narrows it to
    /// those (the chart's `saleNamespaces` sets this flag and grants a Role in each).
    /// `--watch-namespace` narrows it to that one namespace.
    #[arg(long, env = "FLASHSALE_SECRET_NAMESPACES", value_delimiter = ',')]
    pub secret_namespaces: Vec<String>,

    /// The namespace drain agents run in, in every cluster (the same name locally and remotely),
    /// where the installer pre-installs their ServiceAccount (the chart's agent RBAC). Defaults
    /// to the operator's own namespace (`$POD_NAMESPACE`), else `flashsale-system`.
    #[arg(long, default_value_t = default_agent_namespace(), env = "FLASHSALE_AGENT_NAMESPACE")]
    pub agent_namespace: String,
    /// A node selector a sale's `spotDrain.nodeSelector` may use, as `k=v,k2=v2` (repeatable; in
    /// the environment, `;`-separated). A sale's selector must contain every pair of one of
    /// these (more pairs only narrow it to fewer nodes). Widens where agents may drain: list
    /// `''` (the empty selector) only to let a sale drain every node.
    #[arg(
        long = "agent-node-selector",
        default_value = "node.kubernetes.io/instance-lifecycle=spot",
        env = "FLASHSALE_AGENT_NODE_SELECTORS",
        value_delimiter = ';',
        value_parser = node_selector_flag
    )]
    pub agent_node_selectors: Vec<String>,
    /// A metadata endpoint a sale's `spotDrain.metadataEndpoint` may name (repeatable; in the
    /// environment, `,`-separated): the address every agent polls from every node it runs on.
    /// Widens where nodes send requests; the default is the ECS metadata service.
    #[arg(
        long = "agent-metadata-endpoint",
        default_value = "http://100.100.100.200",
        env = "FLASHSALE_AGENT_METADATA_ENDPOINTS",
        value_delimiter = ','
    )]
    pub agent_metadata_endpoints: Vec<String>,
    /// A taint drain agents tolerate, as `key[=value][:Effect]` (`*` tolerates every taint;
    /// repeatable; in the environment, `,`-separated). A sale's `spotDrain.tolerations` may
    /// only repeat these. The default keeps an agent on its node once it (or a cordon) marked it.
    #[arg(
        long = "agent-toleration",
        default_values_t = default_agent_tolerations(),
        env = "FLASHSALE_AGENT_TOLERATIONS",
        value_delimiter = ',',
        value_parser = toleration_flag
    )]
    pub agent_tolerations: Vec<String>,
    /// The PriorityClass of the agents' pods (empty: none), so a full spot node still runs them.
    #[arg(long, default_value = "system-node-critical", env = "FLASHSALE_AGENT_PRIORITY_CLASS")]
    pub agent_priority_class: String,
    /// An image pull secret (in the agent namespace) for the agents' image (repeatable; in the
    /// environment, `,`-separated).
    #[arg(long = "agent-image-pull-secret", env = "FLASHSALE_AGENT_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub agent_image_pull_secrets: Vec<String>,
}

fn default_agent_namespace() -> String {
    std::env::var("POD_NAMESPACE").ok().filter(|ns| !ns.is_empty()).unwrap_or_else(|| "flashsale-system".to_owned())
}

/// A malformed selector or toleration stops the operator at start, never a sale at Preparing.
fn node_selector_flag(value: &str) -> Result<String, String> {
    crate::levers::agents::parse_selector(value).map(|_| value.to_owned())
}

/// An empty value (the chart's empty list) lists no toleration.
fn toleration_flag(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Ok(String::new());
    }
    crate::levers::agents::parse_toleration(value).map(|_| value.to_owned())
}

fn default_agent_tolerations() -> Vec<String> {
    vec![
        format!("{}:NoSchedule", crate::agent::drain::TAINT_KEY),
        "node.kubernetes.io/unschedulable:NoSchedule".to_owned(),
    ]
}

impl Installer {
    /// The defaults a fresh install gets (the same as the flags' defaults).
    pub fn defaults() -> Installer {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct Defaults {
            #[command(flatten)]
            installer: Installer,
        }
        // Every flag has a default, so parsing no arguments cannot fail.
        Defaults::try_parse_from(["flashsale-operator"])
            .map(|d| d.installer)
            .unwrap_or_else(|e| unreachable!("installer flags without defaults: {e}"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn defaults_parse() {
        let installer = super::Installer::defaults();
        assert!(installer.agent_image.starts_with("flashsale-operator:"));
        assert!(installer.warmup_service_accounts.is_empty(), "warm-ups may borrow no ServiceAccount by default");
        assert!(!installer.allow_kubeconfig_exec, "exec plugins are an opt-in");
        assert!(installer.prometheus_url_allow.is_empty(), "only in-cluster Prometheus names by default");
        assert!(installer.secret_namespaces.is_empty(), "Secrets of every namespace by default");
    }
}
