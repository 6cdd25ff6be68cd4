//! Acting as a tenant: a ServiceAccount that may only create FlashSales and Secrets in its own
//! namespace, the rights a sale's author has. Tests act through it (the admin client
//! impersonates it, as `kubectl --as` does) and prove with SubjectAccessReviews that nobody in
//! that namespace gained rights the tenant did not have.

use anyhow::Context as _;
use k8s_openapi::api::{
    authorization::v1::SubjectAccessReview,
    core::v1::ServiceAccount,
    rbac::v1::{Role, RoleBinding},
};
use kube::{
    Api, Client, Config,
    api::{PostParams, ResourceExt as _},
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::harness::Cluster;

/// The tenant's ServiceAccount name in its namespace.
pub const TENANT: &str = "sale-author";

/// The user name the API server gives the tenant ServiceAccount of `ns`.
pub fn user(ns: &str) -> String {
    format!("system:serviceaccount:{ns}:{TENANT}")
}

/// Creates the tenant of `ns` (a ServiceAccount with a Role for FlashSales and Secrets in `ns`
/// only) and returns a client that acts as it.
pub async fn tenant(cluster: &Cluster, admin: &Client, ns: &str) -> anyhow::Result<Client> {
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({"metadata": {"name": TENANT}}))?;
    Api::<ServiceAccount>::namespaced(admin.clone(), ns).create(&PostParams::default(), &sa).await?;
    let role: Role = serde_json::from_value(serde_json::json!({
        "metadata": {"name": TENANT},
        "rules": [
            {"apiGroups": ["flashsale.dev"], "resources": ["flashsales"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["flashsale.dev"], "resources": ["flashsales/status"], "verbs": ["get"]},
            {"apiGroups": [""], "resources": ["secrets"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["get", "list", "watch"]},
        ],
    }))?;
    Api::<Role>::namespaced(admin.clone(), ns).create(&PostParams::default(), &role).await?;
    let binding: RoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": TENANT},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": TENANT},
        "subjects": [{"kind": "ServiceAccount", "name": TENANT, "namespace": ns}],
    }))?;
    Api::<RoleBinding>::namespaced(admin.clone(), ns).create(&PostParams::default(), &binding).await?;
    // The authorizer sees a new binding a moment later: act as the tenant only once it does.
    let who = user(ns);
    crate::support::eventually(std::time::Duration::from_secs(10), || {
        can(admin, &who, "create", "flashsale.dev/flashsales", Some(ns))
    })
    .await
    .context("the tenant's Role never took effect")?;
    as_user(cluster, &who).await
}

/// A client of `cluster` that impersonates `user` (with the groups of a ServiceAccount when
/// `user` is one).
pub async fn as_user(cluster: &Cluster, user: &str) -> anyhow::Result<Client> {
    let kubeconfig = Kubeconfig::read_from(&cluster.kubeconfig)?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.auth_info.impersonate = Some(user.to_owned());
    if let Some(rest) = user.strip_prefix("system:serviceaccount:") {
        let ns = rest.split(':').next().unwrap_or_default();
        config.auth_info.impersonate_groups = Some(vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{ns}"),
            "system:authenticated".into(),
        ]);
    }
    Ok(Client::try_from(config)?)
}

/// Whether `user` may `verb` the `resource` (`group/resource` or `resource`, with an optional
/// `/subresource`) in `ns` (None: cluster-wide), as the API server's authorizer answers.
pub async fn can(admin: &Client, user: &str, verb: &str, resource: &str, ns: Option<&str>) -> anyhow::Result<bool> {
    let (group, resource) = match resource.split_once('/') {
        Some((group, rest)) if group.contains('.') || matches!(group, "apps" | "autoscaling" | "batch" | "policy") => {
            (group, rest)
        }
        _ => ("", resource),
    };
    let (resource, subresource) = match resource.split_once('/') {
        Some((resource, sub)) => (resource, Some(sub)),
        None => (resource, None),
    };
    let mut attributes = serde_json::json!({"verb": verb, "group": group, "resource": resource});
    if let Some(ns) = ns {
        attributes["namespace"] = ns.into();
    }
    if let Some(sub) = subresource {
        attributes["subresource"] = sub.into();
    }
    let mut spec = serde_json::json!({"user": user, "resourceAttributes": attributes});
    if let Some(rest) = user.strip_prefix("system:serviceaccount:") {
        let sa_ns = rest.split(':').next().unwrap_or_default();
        spec["groups"] = serde_json::json!([
            "system:serviceaccounts",
            format!("system:serviceaccounts:{sa_ns}"),
            "system:authenticated"
        ]);
    }
    let review: SubjectAccessReview = serde_json::from_value(serde_json::json!({"spec": spec}))?;
    let answer = Api::<SubjectAccessReview>::all(admin.clone())
        .create(&PostParams::default(), &review)
        .await
        .context("SubjectAccessReview")?;
    Ok(answer.status.is_some_and(|s| s.allowed))
}

/// Every ServiceAccount of `ns` that may do any of the cluster-wide or node-level things a
/// tenant may not: patch nodes, list pods in all namespaces, evict pods elsewhere, read
/// Secrets elsewhere, create ClusterRoles or ClusterRoleBindings. Empty when none may.
pub async fn widened_service_accounts(admin: &Client, ns: &str, elsewhere: &str) -> anyhow::Result<Vec<String>> {
    let checks: [(&str, &str, Option<&str>); 7] = [
        ("patch", "nodes", None),
        ("list", "pods", None),
        ("create", "pods/eviction", Some(elsewhere)),
        ("get", "secrets", Some(elsewhere)),
        ("patch", "apps/deployments", Some(elsewhere)),
        ("create", "rbac.authorization.k8s.io/clusterroles", None),
        ("create", "rbac.authorization.k8s.io/clusterrolebindings", None),
    ];
    let mut widened = vec![];
    for sa in Api::<ServiceAccount>::namespaced(admin.clone(), ns).list(&Default::default()).await? {
        let user = format!("system:serviceaccount:{ns}:{}", sa.name_any());
        for (verb, resource, where_) in checks {
            if can(admin, &user, verb, resource, where_).await? {
                widened.push(format!("{user} may {verb} {resource} in {}", where_.unwrap_or("the cluster")));
            }
        }
    }
    Ok(widened)
}

pub const TESTS: &[(&str, crate::TestFn)] = &[(
    "tenant::the_tenant_may_write_sales_and_secrets_in_its_namespace_only",
    the_tenant_may_write_sales_and_secrets_in_its_namespace_only,
)];

/// The tenant every trust-boundary test acts as has exactly a sale author's rights: the checks
/// the other tests rely on would prove nothing if the tenant could already do more.
fn the_tenant_may_write_sales_and_secrets_in_its_namespace_only(env: &crate::support::Env) -> anyhow::Result<()> {
    let cluster = env.primary()?;
    crate::support::block_on(async {
        let admin = crate::support::client(cluster).await?;
        let ns = crate::support::namespace(&admin, "tenant-self").await?;
        let other = crate::support::namespace(&admin, "tenant-other").await?;
        let tenant = tenant(cluster, &admin, &ns).await?;
        let who = user(&ns);
        for (verb, resource, ns) in
            [("create", "flashsale.dev/flashsales", Some(ns.as_str())), ("create", "secrets", Some(ns.as_str()))]
        {
            anyhow::ensure!(can(&admin, &who, verb, resource, ns).await?, "the tenant may not {verb} {resource}");
        }
        for (verb, resource, ns) in [
            ("create", "flashsale.dev/flashsales", Some(other.as_str())),
            ("get", "secrets", Some(other.as_str())),
            ("create", "pods", Some(ns.as_str())),
            ("create", "batch/jobs", Some(ns.as_str())),
            ("patch", "apps/deployments", Some(ns.as_str())),
            ("patch", "nodes", None),
        ] {
            anyhow::ensure!(!can(&admin, &who, verb, resource, ns).await?, "the tenant may {verb} {resource}");
        }
        // The impersonating client is the tenant in fact: its own namespace's Secrets, not another's.
        let secrets = |ns: &str| Api::<k8s_openapi::api::core::v1::Secret>::namespaced(tenant.clone(), ns);
        secrets(&ns).list(&Default::default()).await.context("the tenant lists its own Secrets")?;
        match secrets(&other).list(&Default::default()).await {
            Err(kube::Error::Api(status)) if status.code == 403 => {}
            unexpected => anyhow::bail!("listing another namespace's Secrets as the tenant: {unexpected:?}"),
        }
        let widened = widened_service_accounts(&admin, &ns, &other).await?;
        anyhow::ensure!(widened.is_empty(), "rights beyond the namespace: {widened:?}");
        Ok(())
    })
}
