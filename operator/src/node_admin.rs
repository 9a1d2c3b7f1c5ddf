//! Talking to the nodes' admin APIs: what key ring each pod runs, and
//! asking origins to reload their signing-key files.

use crate::rotation::KeyView;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::time::Duration;

/// A pod's admin endpoint and the token to use.
#[derive(Clone)]
pub struct NodeTarget {
    pub pod: String,
    /// `ip:port` of the pod's admin listener.
    pub address: String,
    pub token: String,
}

impl std::fmt::Debug for NodeTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeTarget")
            .field("pod", &self.pod)
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// The admin calls the operator makes. The product uses [`HttpNodeAdmin`];
/// tests substitute nodes that read the trust bundle from the fake API
/// server, as kubelet and the node would.
pub trait NodeAdmin: Send + Sync + 'static {
    fn keys(&self, target: &NodeTarget) -> impl Future<Output = Result<KeyView, String>> + Send;
    fn reload(&self, target: &NodeTarget) -> impl Future<Output = Result<(), String>> + Send;
    /// The origin's `dcdn_origin_offload_ratio` gauge, if it has one yet.
    fn origin_offload(
        &self,
        target: &NodeTarget,
    ) -> impl Future<Output = Result<Option<f64>, String>> + Send;
}

/// Reads one unlabelled gauge from Prometheus text.
pub fn gauge(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = rest.strip_prefix(' ').or_else(|| {
                rest.starts_with('{')
                    .then(|| rest.rsplit_once(' ').map(|(_, v)| v))
                    .flatten()
            })?;
            value.trim().parse::<f64>().ok()
        })
        .filter(|v| v.is_finite())
}

/// Largest admin response read; `/v1/keys` is a few hundred bytes.
const MAX_RESPONSE: usize = 256 * 1024;
const TIMEOUT: Duration = Duration::from_secs(3);

/// Plain HTTP to the pod IP (the admin port is cluster-internal; the
/// NetworkPolicy in the chart lets only the operator and Prometheus in).
#[derive(Clone)]
pub struct HttpNodeAdmin {
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpNodeAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpNodeAdmin")
    }
}

impl Default for HttpNodeAdmin {
    fn default() -> Self {
        Self {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

impl HttpNodeAdmin {
    async fn call(
        &self,
        method: hyper::Method,
        target: &NodeTarget,
        path: &str,
    ) -> Result<Bytes, String> {
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("http://{}{path}", target.address))
            .header("authorization", format!("Bearer {}", target.token))
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let response = tokio::time::timeout(TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| format!("no answer from {} within {TIMEOUT:?}", target.address))?
            .map_err(|e| format!("{}: {e}", target.address))?;
        let status = response.status();
        let body = tokio::time::timeout(
            TIMEOUT,
            Limited::new(response.into_body(), MAX_RESPONSE).collect(),
        )
        .await
        .map_err(|_| "response body timed out".to_owned())?
        .map_err(|e| e.to_string())?
        .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "{path} answered {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ));
        }
        Ok(body)
    }
}

/// Parses `GET /v1/keys`.
pub fn parse_keys(body: &[u8]) -> Result<KeyView, String> {
    #[derive(serde::Deserialize)]
    struct Key {
        id: String,
        state: dcdn_node::crypto::KeyState,
        can_sign_here: bool,
    }
    #[derive(serde::Deserialize)]
    struct Keys {
        generation: u64,
        keys: Vec<Key>,
    }
    let k: Keys = serde_json::from_slice(body).map_err(|e| format!("/v1/keys: {e}"))?;
    Ok(KeyView {
        generation: k.generation,
        can_sign: k
            .keys
            .iter()
            .filter(|k| k.can_sign_here)
            .map(|k| k.id.clone())
            .collect(),
        keys: k.keys.into_iter().map(|k| (k.id, k.state)).collect(),
    })
}

impl NodeAdmin for HttpNodeAdmin {
    async fn keys(&self, target: &NodeTarget) -> Result<KeyView, String> {
        let body = self.call(hyper::Method::GET, target, "/v1/keys").await?;
        parse_keys(&body)
    }

    async fn reload(&self, target: &NodeTarget) -> Result<(), String> {
        self.call(hyper::Method::POST, target, "/v1/config/reload")
            .await
            .map(drop)
    }

    async fn origin_offload(&self, target: &NodeTarget) -> Result<Option<f64>, String> {
        let body = self.call(hyper::Method::GET, target, "/metrics").await?;
        Ok(gauge(
            &String::from_utf8_lossy(&body),
            "dcdn_origin_offload_ratio",
        ))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_keys_answer_of_a_node_parses() {
        let body = br#"{"generation":7,"active":"00aa","keys":[
            {"id":"00aa","public_key":"..","state":"active","can_sign_here":true},
            {"id":"00bb","public_key":"..","state":"trusted","can_sign_here":false}]}"#;
        let v = super::parse_keys(body).unwrap();
        assert_eq!(v.generation, 7);
        assert_eq!(v.can_sign, vec!["00aa".to_owned()]);
        assert_eq!(
            v.keys.into_iter().collect::<Vec<_>>(),
            [
                ("00aa".to_owned(), dcdn_node::crypto::KeyState::Active),
                ("00bb".to_owned(), dcdn_node::crypto::KeyState::Trusted)
            ]
        );
        assert!(super::parse_keys(b"{}").unwrap_err().contains("/v1/keys"));
    }

    #[test]
    fn a_gauge_is_read_from_prometheus_text() {
        let text = "# HELP dcdn_origin_offload_ratio x\ndcdn_origin_offload_ratio_other 9\ndcdn_origin_offload_ratio{role=\"origin\"} 1.25\n";
        assert_eq!(super::gauge(text, "dcdn_origin_offload_ratio"), Some(1.25));
        assert_eq!(
            super::gauge(
                "dcdn_origin_offload_ratio NaN\n",
                "dcdn_origin_offload_ratio"
            ),
            None
        );
        assert_eq!(super::gauge("", "dcdn_origin_offload_ratio"), None);
    }
}
