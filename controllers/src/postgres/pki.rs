//! Each DatabaseCluster's own certificate authority. It signs two certificates once, at
//! creation: the instances' serving certificate (valid for every possible instance name) and
//! the operator's client certificate, the only one that may command the instances. The CA key
//! is never stored, so no other certificate can ever be issued under it.

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert: String,
    pub key: String,
}

pub struct ClusterPki {
    pub ca: String,
    pub server: Issued,
    pub operator: Issued,
}

/// Issues the CA and both certificates; `server_names` are the DNS names instances serve under.
pub fn issue(cluster: &str, server_names: Vec<String>) -> Result<ClusterPki> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cluster} instances CA"));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let leaf = |cn: &str, names: Vec<String>, usage: ExtendedKeyUsagePurpose| -> Result<Issued> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        Ok(Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    };
    Ok(ClusterPki {
        server: leaf(
            &format!("{cluster} instance"),
            server_names,
            ExtendedKeyUsagePurpose::ServerAuth,
        )?,
        operator: leaf(
            "bulwark-operator",
            Vec::new(),
            ExtendedKeyUsagePurpose::ClientAuth,
        )?,
        ca: ca.pem(),
    })
}
