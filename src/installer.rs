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

    /// The namespaces whose Secrets the operator reads (the kubeconfig Secrets of sales'
    /// `spec.clusters`), comma-separated. Empty (the default) means every namespace, which needs
    /// a cluster-wide right to read Secrets; listing the namespaces sales live in narrows it to
    /// those (the chart's `saleNamespaces` sets this flag and grants a Role in each).
    /// `--watch-namespace` narrows it to that one namespace.
    #[arg(long, env = "FLASHSALE_SECRET_NAMESPACES", value_delimiter = ',')]
    pub secret_namespaces: Vec<String>,
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
        assert!(installer.secret_namespaces.is_empty(), "Secrets of every namespace by default");
    }
}
