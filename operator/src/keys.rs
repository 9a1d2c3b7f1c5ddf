//! Key material: the mesh CA, one certificate per pod, the origin's signing
//! keys and the admin tokens, each kept in a Secret the operator owns.
//!
//! Secrets are the only place a private key is written. Functions here read
//! them back from the API server's objects and build the objects to apply;
//! the `Debug` of every type holding a secret is redacted, so a key cannot
//! reach a log line through `{:?}`.

use crate::build::{Names, meta};
use dcdn_node::config::Role;
use dcdn_node::crypto::Signer;
use dcdn_node::transport::ClusterCa;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// Keys of the signing Secret. Origins load both files; outside a
/// rotation both hold the active key, so the config never changes.
pub const CURRENT_KEY_FILE: &str = "current.key";
pub const NEXT_KEY_FILE: &str = "next.key";
pub const CA_CERT_FILE: &str = "ca.crt";
const CA_KEY_FILE: &str = "ca.key";
pub const ADMIN_TOKEN_FILE: &str = "token";
pub const INGEST_TOKEN_FILE: &str = "ingest-token";
pub const READ_TOKEN_FILE: &str = "read-token";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("Secret {secret} has no usable {field}: {message}")]
    Corrupt {
        secret: String,
        field: String,
        message: String,
    },
    #[error("issuing a certificate: {0}")]
    Pki(String),
}

fn field(secret: &Secret, key: &str) -> Option<String> {
    let data = secret.data.as_ref()?;
    let bytes = data.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn corrupt(secret: &str, field: &str, message: impl Into<String>) -> KeyError {
    KeyError::Corrupt {
        secret: secret.into(),
        field: field.into(),
        message: message.into(),
    }
}

fn secret_object(names: &Names, name: String, role: Option<Role>, data: &[(&str, &str)]) -> Value {
    let data: BTreeMap<&str, ByteString> = data
        .iter()
        .map(|(k, v)| (*k, ByteString(v.as_bytes().to_vec())))
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta(names, name, role),
        "type": "Opaque",
        "data": data,
    })
}

/// The origin's signing keys: the active one and, between `Staged` and
/// `Retiring`, the next one.
pub struct SigningKeys {
    pub current: Signer,
    pub next: Option<Signer>,
}

impl std::fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeys")
            .field("current", &self.current.key_id())
            .field("next", &self.next.as_ref().map(Signer::key_id))
            .finish()
    }
}

impl SigningKeys {
    pub fn generate() -> Self {
        Self {
            current: Signer::generate(&mut rand::rngs::OsRng),
            next: None,
        }
    }

    pub fn from_secret(secret: &Secret, name: &str) -> Result<Self, KeyError> {
        let read = |file: &str| -> Result<Signer, KeyError> {
            let text = field(secret, file).ok_or_else(|| corrupt(name, file, "missing"))?;
            Signer::from_secret_hex(&text).map_err(|m| corrupt(name, file, m))
        };
        let current = read(CURRENT_KEY_FILE)?;
        let next = read(NEXT_KEY_FILE)?;
        let next = (next.key_id() != current.key_id()).then_some(next);
        Ok(Self { current, next })
    }

    pub fn to_secret(&self, names: &Names) -> Value {
        let current = self.current.to_secret_hex();
        let next = self.next.as_ref().unwrap_or(&self.current).to_secret_hex();
        secret_object(
            names,
            names.signing_secret(),
            Some(Role::Origin),
            &[(CURRENT_KEY_FILE, &current), (NEXT_KEY_FILE, &next)],
        )
    }
}

/// The mesh CA, kept so new pods get certificates from the same root.
pub struct MeshCa(pub ClusterCa);

impl std::fmt::Debug for MeshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeshCa(..)")
    }
}

impl MeshCa {
    pub fn generate(cluster: &str) -> Result<Self, KeyError> {
        ClusterCa::generate(cluster)
            .map(Self)
            .map_err(|e| KeyError::Pki(e.to_string()))
    }

    pub fn from_secret(secret: &Secret, name: &str) -> Result<Self, KeyError> {
        let cert =
            field(secret, CA_CERT_FILE).ok_or_else(|| corrupt(name, CA_CERT_FILE, "missing"))?;
        let key =
            field(secret, CA_KEY_FILE).ok_or_else(|| corrupt(name, CA_KEY_FILE, "missing"))?;
        Ok(Self(ClusterCa::from_pem(cert, key)))
    }

    pub fn to_secret(&self, names: &Names) -> Value {
        secret_object(
            names,
            names.ca_secret(),
            None,
            &[
                (CA_CERT_FILE, self.0.cert_pem()),
                (CA_KEY_FILE, self.0.key_pem()),
            ],
        )
    }

    /// A tier's TLS Secret: the CA certificate and one certificate and key
    /// per pod (`{pod}.crt`, `{pod}.key`). Certificates already issued to a
    /// pod are kept: a node's peer id is its certificate's key, and peers
    /// remember ids (reputation, choking) across restarts.
    pub fn tier_secret(
        &self,
        names: &Names,
        role: Role,
        replicas: u32,
        existing: Option<&Secret>,
    ) -> Result<Value, KeyError> {
        let mut data: Vec<(String, String)> =
            vec![(CA_CERT_FILE.to_owned(), self.0.cert_pem().to_owned())];
        for pod in names.pods(role, replicas) {
            let (crt, key) = (format!("{pod}.crt"), format!("{pod}.key"));
            let kept = existing.and_then(|s| Some((field(s, &crt)?, field(s, &key)?)));
            let (cert_pem, key_pem) = match kept {
                Some(pair) => pair,
                None => {
                    let id = self
                        .0
                        .issue_node(&pod, role)
                        .map_err(|e| KeyError::Pki(e.to_string()))?;
                    (id.cert_pem, id.key_pem)
                }
            };
            data.push((crt, cert_pem));
            data.push((key, key_pem));
        }
        let pairs: Vec<(&str, &str)> = data.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Ok(secret_object(
            names,
            names.tls_secret(role),
            Some(role),
            &pairs,
        ))
    }
}

/// The admin, ingest and read bearer tokens, when the operator generates them.
pub struct AdminTokens {
    pub admin: String,
    pub ingest: String,
    /// Reads the nodes' admin APIs and cannot change them: what the
    /// operator polls with, so a leak of what it holds in memory for its
    /// reads cannot trust a key or reload a node.
    pub read: String,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminTokens(..)")
    }
}

impl AdminTokens {
    pub fn generate() -> Self {
        use rand::RngCore;
        let token = || {
            let mut b = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut b);
            hex::encode(b)
        };
        Self {
            admin: token(),
            ingest: token(),
            read: token(),
        }
    }

    /// A fresh read token, for a Secret written before read tokens existed.
    pub fn with_new_read_token(mut self) -> Self {
        self.read = Self::generate().read;
        self
    }

    /// Reads a token Secret, the operator's or the user's (`token`, and
    /// `ingest-token` and `read-token`, which default to the admin token:
    /// a user's Secret without a read token keeps working, with the
    /// operator reading by the admin token as before).
    pub fn from_secret(secret: &Secret, name: &str) -> Result<Self, KeyError> {
        let admin = field(secret, ADMIN_TOKEN_FILE)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or_else(|| corrupt(name, ADMIN_TOKEN_FILE, "missing or empty"))?;
        let ingest = field(secret, INGEST_TOKEN_FILE)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| admin.clone());
        let read = field(secret, READ_TOKEN_FILE)
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| admin.clone());
        Ok(Self {
            admin,
            ingest,
            read,
        })
    }

    /// The Secret pods mount: the same keys, each holding `sha256:<hex>` of
    /// its token, which the node checks presented tokens against.
    pub fn digest_secret(&self, names: &Names) -> Result<Value, KeyError> {
        let digest = |what: &str, t: &str| {
            dcdn_node::auth::Token::from_secret(t)
                .map(|t| t.hashed())
                .map_err(|e| corrupt(&names.admin_secret(), what, e.to_string()))
        };
        Ok(secret_object(
            names,
            names.token_digests_secret(),
            None,
            &[
                (ADMIN_TOKEN_FILE, &digest(ADMIN_TOKEN_FILE, &self.admin)?),
                (INGEST_TOKEN_FILE, &digest(INGEST_TOKEN_FILE, &self.ingest)?),
                (READ_TOKEN_FILE, &digest(READ_TOKEN_FILE, &self.read)?),
            ],
        ))
    }

    pub fn to_secret(&self, names: &Names) -> Value {
        secret_object(
            names,
            names.admin_secret(),
            None,
            &[
                (ADMIN_TOKEN_FILE, &self.admin),
                (INGEST_TOKEN_FILE, &self.ingest),
                (READ_TOKEN_FILE, &self.read),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        let mut c = crate::crd::from_yaml(
            "apiVersion: dcdn.io/v1alpha1\nkind: DcdnCluster\nmetadata: {name: demo, namespace: cdn}\nspec: {image: x}\n",
        )
        .unwrap();
        c.metadata.namespace = Some("cdn".into());
        Names::of(&c).unwrap()
    }

    fn as_secret(v: Value) -> Secret {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn signing_keys_round_trip_through_their_secret_and_debug_hides_them() {
        let names = names();
        let mut keys = SigningKeys::generate();
        let s = as_secret(keys.to_secret(&names));
        let back = SigningKeys::from_secret(&s, "x").unwrap();
        assert_eq!(back.current.key_id(), keys.current.key_id());
        assert!(
            back.next.is_none(),
            "both files hold the same key outside a rotation"
        );
        keys.next = Some(Signer::generate(&mut rand::rngs::OsRng));
        let s = as_secret(keys.to_secret(&names));
        let back = SigningKeys::from_secret(&s, "x").unwrap();
        assert_eq!(
            back.next.as_ref().map(Signer::key_id),
            keys.next.as_ref().map(Signer::key_id)
        );
        let debug = format!("{back:?}");
        assert!(!debug.contains(&keys.current.to_secret_hex()), "{debug}");
    }

    #[test]
    fn tier_certificates_are_per_pod_and_kept_across_scaling() {
        let names = names();
        let ca = MeshCa::generate("demo").unwrap();
        let two = as_secret(ca.tier_secret(&names, Role::Edge, 2, None).unwrap());
        let data = two.data.as_ref().unwrap();
        assert!(data.contains_key("demo-edge-0.crt") && data.contains_key("demo-edge-1.key"));
        assert_ne!(data["demo-edge-0.key"], data["demo-edge-1.key"]);
        let three = as_secret(ca.tier_secret(&names, Role::Edge, 3, Some(&two)).unwrap());
        let d3 = three.data.as_ref().unwrap();
        assert_eq!(d3["demo-edge-0.key"], data["demo-edge-0.key"]);
        assert!(d3.contains_key("demo-edge-2.crt"));
        let one = as_secret(ca.tier_secret(&names, Role::Edge, 1, Some(&three)).unwrap());
        assert_eq!(one.data.unwrap().len(), 3, "ca.crt plus one pair");
    }

    #[test]
    fn a_corrupt_secret_names_the_secret_and_the_field() {
        let s = Secret {
            data: Some(BTreeMap::from([(
                CURRENT_KEY_FILE.to_owned(),
                ByteString(b"zz".to_vec()),
            )])),
            ..Default::default()
        };
        let e = SigningKeys::from_secret(&s, "demo-signing-key")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("demo-signing-key") && e.contains("current.key"),
            "{e}"
        );
    }
}
