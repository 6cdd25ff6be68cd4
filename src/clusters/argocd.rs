//! Argo CD cluster Secrets, read as the kubeconfig they stand for.
//!
//! Argo CD keeps a cluster's address under the Secret key `server` and its credentials under
//! `config`, a JSON `ClusterConfig` (`bearerToken`, `username`/`password`, `tlsClientConfig`,
//! `execProviderConfig`, `awsAuthConfig`, `proxyUrl`, ...). The translation keeps only inert data;
//! what would run a command or use an identity other than the one the Secret holds is refused
//! here, naming the Argo CD field, before any kubeconfig exists. The kubeconfig it returns then
//! goes through [`super::check`] like any other.

use base64::Engine as _;
use kube::config::Kubeconfig;
use serde_json::{Map, Value, json};

use super::Refusal;

/// What an Argo CD cluster Secret may hold, told with each refusal.
pub const CREDENTIALS_POLICY: &str = "Argo CD cluster Secrets may hold only inline credentials (bearerToken, tlsClientConfig.certData/keyData, username/password)";

/// Why an Argo CD cluster Secret gives no kubeconfig.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Translation {
    /// A field the operator will not use: it runs a command, reads a file or borrows an identity.
    #[error("{0}")]
    Refused(Refusal),
    /// The Secret is not an Argo CD cluster Secret the operator can read (the text names the
    /// key or field, never its contents).
    #[error("{0}")]
    Malformed(String),
}

/// The kubeconfig an Argo CD cluster Secret's `server` and `config` describe.
///
/// `execProviderConfig` becomes the kubeconfig's exec plugin when the installer allows exec
/// plugins (`allow_exec`), and is refused otherwise. `awsAuthConfig` is always refused: Argo CD
/// runs `argocd-k8s-auth` with its own pod's AWS identity, which here would be the operator's,
/// not one the Secret's author holds. `proxyUrl` is refused as a kubeconfig's `proxy-url` is,
/// and so is any `...File` field (`caFile`, `bearerTokenFile`, ...: a path on the operator's
/// disk). Fields with no bearing on the connection (`disableCompression`, and keys Argo CD
/// itself adds later) are ignored.
pub fn kubeconfig(server: &str, config: &str, allow_exec: bool) -> Result<Kubeconfig, Translation> {
    let malformed = |what: &str| Translation::Malformed(what.to_owned());
    let config: Value = serde_json::from_str(config).map_err(|_| malformed("its key \"config\" is not JSON"))?;
    let Value::Object(config) = config else { return Err(malformed("its key \"config\" is not a JSON object")) };
    let refuse = |field: &str, why: String| Translation::Refused(Refusal { field: format!("config.{field}"), why });
    let credentials = if allow_exec {
        format!(
            "{CREDENTIALS_POLICY} or an execProviderConfig (the installer allows them with --allow-kubeconfig-exec)"
        )
    } else {
        CREDENTIALS_POLICY.to_owned()
    };
    if let Some(field) = config.keys().find(|k| k.ends_with("File")) {
        return Err(refuse(
            field,
            "an Argo CD cluster Secret holds its credentials inline, never as a file path".into(),
        ));
    }
    if config.contains_key("awsAuthConfig") {
        return Err(refuse(
            "awsAuthConfig",
            format!(
                "it would authenticate with the operator's own AWS identity (argocd-k8s-auth), not one the Secret holds; {credentials}"
            ),
        ));
    }
    if config.contains_key("proxyUrl") {
        return Err(refuse(
            "proxyUrl",
            "the operator connects to a sale's clusters directly, not through a proxy".into(),
        ));
    }
    if config.contains_key("execProviderConfig") && !allow_exec {
        return Err(refuse("execProviderConfig", credentials));
    }

    let mut cluster = Map::new();
    cluster.insert("server".into(), Value::String(server.trim().to_owned()));
    let mut user = Map::new();
    for (field, key) in [("bearerToken", "token"), ("username", "username"), ("password", "password")] {
        if let Some(value) = string(&config, field, "config")? {
            user.insert(key.into(), Value::String(value.to_owned()));
        }
    }
    if let Some(tls) = config.get("tlsClientConfig") {
        let Value::Object(tls) = tls else { return Err(malformed("config.tlsClientConfig is not a JSON object")) };
        if let Some(field) = tls.keys().find(|k| k.ends_with("File")) {
            return Err(refuse(
                &format!("tlsClientConfig.{field}"),
                "an Argo CD cluster Secret holds its certificates inline (caData, certData, keyData), never as file paths"
                    .into(),
            ));
        }
        match tls.get("insecure") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(insecure)) => {
                cluster.insert("insecure-skip-tls-verify".into(), Value::Bool(*insecure));
            }
            Some(_) => return Err(malformed("config.tlsClientConfig.insecure is not a boolean")),
        }
        let at = "config.tlsClientConfig";
        if let Some(name) = string(tls, "serverName", at)? {
            cluster.insert("tls-server-name".into(), Value::String(name.to_owned()));
        }
        // Argo CD's PEM fields are Go []byte, so base64 in JSON: the kubeconfig's *-data form.
        for (field, on_cluster, key) in [
            ("caData", true, "certificate-authority-data"),
            ("certData", false, "client-certificate-data"),
            ("keyData", false, "client-key-data"),
        ] {
            if let Some(data) = string(tls, field, at)? {
                if base64::engine::general_purpose::STANDARD.decode(data).is_err() {
                    return Err(Translation::Malformed(format!("{at}.{field} is not base64")));
                }
                let target = if on_cluster { &mut cluster } else { &mut user };
                target.insert(key.into(), Value::String(data.to_owned()));
            }
        }
    }
    if let Some(exec) = config.get("execProviderConfig") {
        user.insert("exec".into(), exec_plugin(exec)?);
    }
    let kubeconfig = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "argocd",
        "clusters": [{"name": "argocd", "cluster": cluster}],
        "users": [{"name": "argocd", "user": user}],
        "contexts": [{"name": "argocd", "context": {"cluster": "argocd", "user": "argocd"}}],
    });
    serde_json::from_value(kubeconfig).map_err(|_| malformed("its config cannot be read as cluster credentials"))
}

/// A string field of a JSON object, if present; another type is malformed.
fn string<'a>(object: &'a Map<String, Value>, field: &str, at: &str) -> Result<Option<&'a str>, Translation> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Translation::Malformed(format!("{at}.{field} is not a string"))),
    }
}

/// Argo CD's `ExecProviderConfig` as a kubeconfig exec plugin.
fn exec_plugin(exec: &Value) -> Result<Value, Translation> {
    let at = "config.execProviderConfig";
    let malformed = |what: &str| Translation::Malformed(format!("{at}{what}"));
    let Value::Object(exec) = exec else { return Err(malformed(" is not a JSON object")) };
    let mut plugin = Map::new();
    let command = string(exec, "command", at)?.ok_or_else(|| malformed(".command is missing"))?;
    plugin.insert("command".into(), Value::String(command.to_owned()));
    plugin.insert(
        "apiVersion".into(),
        Value::String(string(exec, "apiVersion", at)?.unwrap_or("client.authentication.k8s.io/v1").to_owned()),
    );
    match exec.get("args") {
        None | Some(Value::Null) => {}
        Some(Value::Array(args)) if args.iter().all(Value::is_string) => {
            plugin.insert("args".into(), Value::Array(args.clone()));
        }
        Some(_) => return Err(malformed(".args is not a list of strings")),
    }
    match exec.get("env") {
        None | Some(Value::Null) => {}
        Some(Value::Object(env)) if env.values().all(Value::is_string) => {
            let list: Vec<Value> = env.iter().map(|(name, value)| json!({"name": name, "value": value})).collect();
            plugin.insert("env".into(), Value::Array(list));
        }
        Some(_) => return Err(malformed(".env is not a map of strings")),
    }
    if let Some(hint) = string(exec, "installHint", at)? {
        plugin.insert("installHint".into(), Value::String(hint.to_owned()));
    }
    Ok(Value::Object(plugin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::config::Kubeconfig;

    const SERVER: &str = "https://10.0.0.1:6443";

    fn translate(config: &str, allow_exec: bool) -> Result<Kubeconfig, Translation> {
        kubeconfig(SERVER, config, allow_exec)
    }

    /// The one cluster and user of a translated kubeconfig, as YAML-shaped JSON.
    fn parts(config: &str, allow_exec: bool) -> (Value, Value) {
        let kubeconfig = translate(config, allow_exec).unwrap();
        let value = serde_json::to_value(&kubeconfig).unwrap();
        (value["clusters"][0]["cluster"].clone(), value["users"][0]["user"].clone())
    }

    #[test]
    fn each_argo_field_lands_on_its_kubeconfig_field() {
        // (config, where in the kubeconfig, which field, the value it holds there)
        let table: &[(&str, &str, &str, Value)] = &[
            (r#"{"bearerToken": "abc"}"#, "user", "token", json!("abc")),
            (r#"{"username": "u", "password": "p"}"#, "user", "username", json!("u")),
            (r#"{"username": "u", "password": "p"}"#, "user", "password", json!("p")),
            (r#"{"tlsClientConfig": {"insecure": true}}"#, "cluster", "insecure-skip-tls-verify", json!(true)),
            (r#"{"tlsClientConfig": {"insecure": false}}"#, "cluster", "insecure-skip-tls-verify", json!(false)),
            (
                r#"{"tlsClientConfig": {"serverName": "api.internal"}}"#,
                "cluster",
                "tls-server-name",
                json!("api.internal"),
            ),
            (r#"{"tlsClientConfig": {"caData": "Q0E="}}"#, "cluster", "certificate-authority-data", json!("Q0E=")),
            (r#"{"tlsClientConfig": {"certData": "Q0VSVA=="}}"#, "user", "client-certificate-data", json!("Q0VSVA==")),
            (r#"{"tlsClientConfig": {"keyData": "S0VZ"}}"#, "user", "client-key-data", json!("S0VZ")),
            (r#"{"bearerToken": "abc"}"#, "cluster", "server", json!(SERVER)),
            // Ignored: it has no bearing on who connects where.
            (r#"{"bearerToken": "abc", "disableCompression": true}"#, "user", "token", json!("abc")),
        ];
        for (config, part, field, want) in table {
            let (cluster, user) = parts(config, false);
            let got = if *part == "user" { &user[field] } else { &cluster[field] };
            assert_eq!(got, want, "{config}: {part}.{field} in cluster {cluster}, user {user}");
        }
    }

    #[test]
    fn an_allowed_exec_provider_becomes_an_exec_plugin() {
        let config = r#"{"execProviderConfig": {"command": "argocd-k8s-auth", "args": ["gcp"], "env": {"A": "b"}, "apiVersion": "client.authentication.k8s.io/v1beta1", "installHint": "install it"}}"#;
        let (_, user) = parts(config, true);
        assert_eq!(user["exec"]["command"], json!("argocd-k8s-auth"));
        assert_eq!(user["exec"]["args"], json!(["gcp"]));
        assert_eq!(user["exec"]["env"], json!([{"name": "A", "value": "b"}]));
        assert_eq!(user["exec"]["apiVersion"], json!("client.authentication.k8s.io/v1beta1"));
        assert_eq!(user["exec"]["installHint"], json!("install it"));
        // What the operator then checks and sanitises is an ordinary kubeconfig exec plugin.
        let kubeconfig = translate(config, true).unwrap();
        assert!(super::super::check(&kubeconfig, true).is_ok());
        assert_eq!(super::super::check(&kubeconfig, false).unwrap_err().field, "users[0].user.exec");
    }

    #[test]
    fn refusals_name_the_argo_field() {
        // (config, refused field without exec allowed, refused field with exec allowed)
        let table: &[(&str, Option<&str>, Option<&str>)] = &[
            (r#"{"bearerToken": "abc"}"#, None, None),
            (r#"{"execProviderConfig": {"command": "sh"}}"#, Some("config.execProviderConfig"), None),
            (
                r#"{"awsAuthConfig": {"clusterName": "shop", "roleARN": "arn:aws:iam::1:role/x"}}"#,
                Some("config.awsAuthConfig"),
                Some("config.awsAuthConfig"),
            ),
            (
                r#"{"bearerToken": "a", "proxyUrl": "http://10.0.0.2:3128"}"#,
                Some("config.proxyUrl"),
                Some("config.proxyUrl"),
            ),
            (
                r#"{"bearerTokenFile": "/var/run/secrets/token"}"#,
                Some("config.bearerTokenFile"),
                Some("config.bearerTokenFile"),
            ),
            (
                r#"{"tlsClientConfig": {"caFile": "/etc/ca.crt"}}"#,
                Some("config.tlsClientConfig.caFile"),
                Some("config.tlsClientConfig.caFile"),
            ),
            (
                r#"{"tlsClientConfig": {"certData": "Q0VSVA==", "keyFile": "/k.pem"}}"#,
                Some("config.tlsClientConfig.keyFile"),
                Some("config.tlsClientConfig.keyFile"),
            ),
            // AWS auth is refused even beside an allowed exec provider.
            (
                r#"{"execProviderConfig": {"command": "sh"}, "awsAuthConfig": {"clusterName": "shop"}}"#,
                Some("config.awsAuthConfig"),
                Some("config.awsAuthConfig"),
            ),
        ];
        for (config, refused, refused_with_exec) in table {
            for (allow_exec, expected) in [(false, refused), (true, refused_with_exec)] {
                let verdict = match translate(config, allow_exec) {
                    Ok(_) => None,
                    Err(Translation::Refused(refusal)) => Some(refusal.field),
                    Err(Translation::Malformed(why)) => panic!("{config}: malformed: {why}"),
                };
                assert_eq!(verdict.as_deref(), *expected, "{config}, allow_exec {allow_exec}");
            }
        }
    }

    #[test]
    fn refusals_say_why_and_what_is_allowed() {
        let Err(Translation::Refused(refusal)) = translate(r#"{"execProviderConfig": {"command": "sh"}}"#, false)
        else {
            panic!("exec was not refused")
        };
        assert_eq!(refusal.to_string(), format!("config.execProviderConfig is not allowed: {CREDENTIALS_POLICY}"));
        let Err(Translation::Refused(refusal)) = translate(r#"{"awsAuthConfig": {}}"#, true) else { panic!() };
        assert!(refusal.why.contains("operator's own AWS identity"), "{refusal}");
        assert!(refusal.why.contains("execProviderConfig"), "with exec allowed the hint names it: {refusal}");
    }

    #[test]
    fn malformed_configs_name_the_field_and_never_quote_it() {
        let table: &[(&str, &str)] = &[
            ("SECRETISH not json", "its key \"config\" is not JSON"),
            (r#"["SECRETISH"]"#, "its key \"config\" is not a JSON object"),
            (r#"{"bearerToken": 7}"#, "config.bearerToken is not a string"),
            (r#"{"tlsClientConfig": "SECRETISH"}"#, "config.tlsClientConfig is not a JSON object"),
            (r#"{"tlsClientConfig": {"insecure": "yes"}}"#, "config.tlsClientConfig.insecure is not a boolean"),
            (r#"{"tlsClientConfig": {"caData": "SECRETISH!!"}}"#, "config.tlsClientConfig.caData is not base64"),
            (r#"{"execProviderConfig": {"args": ["x"]}}"#, "config.execProviderConfig.command is missing"),
            (
                r#"{"execProviderConfig": {"command": "sh", "env": ["A"]}}"#,
                "config.execProviderConfig.env is not a map of strings",
            ),
        ];
        for (config, want) in table {
            let Err(Translation::Malformed(why)) = translate(config, true) else { panic!("{config} was read") };
            assert_eq!(why, *want, "{config}");
            assert!(!why.contains("SECRETISH"));
        }
    }
}
