//! Certificates and keys for a throwaway control plane: one CA, a serving certificate for the
//! API server, client certificates per component, and the service-account signing key.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use std::path::{Path, PathBuf};

pub struct Pki {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// Signing key (PKCS#8) and its public half; the API server verifies with the public file.
    pub service_account_key: PathBuf,
    pub service_account_pub: PathBuf,
}

/// A client identity: certificate and key file.
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Pki {
    pub fn generate(dir: &Path) -> Result<(Self, Authority)> {
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "bulwark-local-ca");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca_key_pem = ca_key.serialize_pem();
        let ca = CertifiedIssuer::self_signed(params, ca_key)?;
        let write = |name: &str, contents: &str| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, contents)?;
            Ok(path)
        };
        let ca_cert = write("ca.crt", &ca.pem())?;
        let ca_key = write("ca.key", &ca_key_pem)?;
        let authority = Authority {
            ca,
            dir: dir.to_path_buf(),
        };

        let sans = [
            "127.0.0.1",
            "10.244.0.1",
            "localhost",
            "10.96.0.1",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
        ];
        let serving = authority.issue(
            "kube-apiserver",
            &[],
            &sans,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?;
        let service_account = KeyPair::generate()?;
        let service_account_key = write("service-account.key", &service_account.serialize_pem())?;
        let service_account_pub = write("service-account.pub", &service_account.public_key_pem())?;
        Ok((
            Self {
                ca_cert,
                ca_key,
                serving_cert: serving.cert,
                serving_key: serving.key,
                service_account_key,
                service_account_pub,
            },
            authority,
        ))
    }
}

pub struct Authority {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Authority {
    /// A serving certificate for `sans` that also authenticates as a client (node agents).
    pub fn serving(&self, name: &str, sans: &[&str]) -> Result<ClientCert> {
        self.issue(name, &[], sans, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for user `cn` in `groups`.
    pub fn client(&self, cn: &str, groups: &[&str]) -> Result<ClientCert> {
        self.issue(cn, groups, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        cn: &str,
        groups: &[&str],
        sans: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<ClientCert> {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, cn);
        for group in groups {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *group);
        }
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca)?;
        let file = cn.replace(':', "-");
        let cert_path = self.dir.join(format!("{file}.crt"));
        let key_path = self.dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        Ok(ClientCert {
            cert: cert_path,
            key: key_path,
        })
    }
}

/// A kubeconfig that points at `server` as `identity`, referencing the files by path.
pub fn kubeconfig(server: &str, ca: &Path, identity: &ClientCert) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bulwark-local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
         users:\n- name: bulwark-local\n  user:\n    client-certificate: {cert}\n    client-key: {key}\n\
         contexts:\n- name: bulwark-local\n  context:\n    cluster: bulwark-local\n    user: bulwark-local\n    namespace: default\n\
         current-context: bulwark-local\n",
        ca = ca.display(),
        cert = identity.cert.display(),
        key = identity.key.display(),
    )
}
