//! Certificates for a test control plane: a CA, the API server's serving certificate, an admin
//! client certificate in `system:masters`, the service-account signing key, and client
//! certificates for plain users minted on demand (an identity with only the rights RBAC gives).

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::{
    fs,
    path::{Path, PathBuf},
};

pub struct Pki {
    pub dir: PathBuf,
    ca_pem: String,
    admin_cert_pem: String,
    admin_key_pem: String,
}

fn b64(data: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

impl Pki {
    pub fn generate(dir: &Path) -> anyhow::Result<Pki> {
        fs::create_dir_all(dir)?;
        let ca_key = KeyPair::generate()?;
        let ca_params = ca_params()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca_pem = ca_cert.pem();
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "10.96.0.1".to_owned(),
        ])?;
        server.distinguished_name.push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin.distinguished_name.push(DnType::CommonName, "e2e-admin");
        admin.distinguished_name.push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;
        let write = |name: &str, body: &str| fs::write(dir.join(name), body).with_context(|| format!("writing {name}"));
        write("ca.crt", &ca_pem)?;
        write("ca.key", &ca_key_pem)?;
        write("apiserver.crt", &server_cert.pem())?;
        write("apiserver.key", &server_key.serialize_pem())?;
        write("admin.crt", &admin_cert.pem())?;
        write("admin.key", &admin_key.serialize_pem())?;
        write("sa.key", &sa_key.serialize_pem())?;
        write("sa.pub", &sa_key.public_key_pem())?;
        Ok(Pki {
            dir: dir.to_owned(),
            ca_pem,
            admin_cert_pem: admin_cert.pem(),
            admin_key_pem: admin_key.serialize_pem(),
        })
    }

    /// A kubeconfig (everything embedded) for the plain user `user` in `groups`, with a client
    /// certificate signed by the CA in `dir`: an identity with no rights but those RBAC binds.
    pub fn user_kubeconfig(
        dir: &Path,
        server: &str,
        name: &str,
        user: &str,
        groups: &[&str],
    ) -> anyhow::Result<String> {
        let read = |f: &str| fs::read_to_string(dir.join(f)).with_context(|| format!("reading {f}"));
        let ca_pem = read("ca.crt")?;
        // The same subject as the CA certificate: what the signature needs to chain to it.
        let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&read("ca.key")?)?);
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        for group in groups {
            params.distinguished_name.push(DnType::OrganizationName, *group);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer)?;
        Ok(format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: {user}}}\ncurrent-context: {name}\n",
            b64(&ca_pem),
            b64(&cert.pem()),
            b64(&key.serialize_pem())
        ))
    }

    /// A kubeconfig for the admin identity with everything embedded.
    pub fn kubeconfig(&self, server: &str, name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: {name}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\nusers:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\ncontexts:\n- name: {name}\n  context: {{cluster: {name}, user: admin}}\ncurrent-context: {name}\n",
            b64(&self.ca_pem),
            b64(&self.admin_cert_pem),
            b64(&self.admin_key_pem)
        )
    }
}

/// The CA's certificate parameters (its subject is what issued certificates name).
fn ca_params() -> anyhow::Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "flashsale-e2e-ca");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(params)
}
