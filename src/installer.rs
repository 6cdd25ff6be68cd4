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
    }
}
