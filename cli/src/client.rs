//! Thin REST client of the controller's `/v1` API. Errors carry the controller's own
//! message (which says what to do) and map to the CLI's exit codes.

use std::path::{Path, PathBuf};

use berth_api::rest::{ApiError, CreateSite, Scale, Site, SiteList, WorkerList};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no API token: {0}")]
    NoToken(String),
    #[error("cannot reach the Berth controller at {url}: {source}. Is it running? Start one with `berth up`, or point --api / BERTH_API at it")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{message}")]
    Api {
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("unexpected answer from the controller ({status}): {body}")]
    Protocol { status: StatusCode, body: String },
}

impl ClientError {
    /// The process exit code for this error (see the crate docs).
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Api { status, .. } if *status == StatusCode::NOT_FOUND => 3,
            _ => 1,
        }
    }
}

/// Finds the API token: `BERTH_TOKEN`, else the token file (given, or the default
/// `/var/lib/berth/controller/token` written by the controller at first start).
pub fn load_token(token_file: Option<&Path>) -> Result<String, ClientError> {
    if let Ok(t) = std::env::var("BERTH_TOKEN") {
        if !t.trim().is_empty() {
            return Ok(t.trim().to_string());
        }
    }
    let path: PathBuf = token_file
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/var/lib/berth/controller/token"));
    std::fs::read_to_string(&path)
        .map(|t| t.trim().to_string())
        .map_err(|e| {
            ClientError::NoToken(format!(
                "reading {}: {e}; set BERTH_TOKEN, or pass --token-file (the controller writes it under its state dir at first start)",
                path.display()
            ))
        })
}

pub struct ApiClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl ApiClient {
    pub fn new(base: &str, token: String) -> Self {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .expect("building an HTTP client with default TLS settings cannot fail");
        Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            http,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<T>, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.base.clone(),
                source,
            })?;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || text.is_empty() {
                return Ok(None);
            }
            return serde_json::from_str(&text)
                .map(Some)
                .map_err(|_| ClientError::Protocol { status, body: text });
        }
        match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => Err(ClientError::Api {
                status,
                code: e.code,
                message: e.message,
            }),
            Err(_) => Err(ClientError::Protocol { status, body: text }),
        }
    }

    fn need<T>(v: Option<T>) -> Result<T, ClientError> {
        v.ok_or(ClientError::Protocol {
            status: StatusCode::NO_CONTENT,
            body: "empty body where a JSON document was expected".into(),
        })
    }

    pub async fn create_site(&self, req: &CreateSite) -> Result<Site, ClientError> {
        let body = serde_json::to_value(req).expect("CreateSite serializes");
        Self::need(self.call(Method::POST, "/v1/sites", Some(body)).await?)
    }

    pub async fn list_sites(&self) -> Result<SiteList, ClientError> {
        Self::need(self.call(Method::GET, "/v1/sites", None).await?)
    }

    pub async fn get_site(&self, name: &str) -> Result<Site, ClientError> {
        Self::need(
            self.call(Method::GET, &format!("/v1/sites/{}", enc(name)), None)
                .await?,
        )
    }

    pub async fn scale(&self, name: &str, instances: i64) -> Result<Site, ClientError> {
        let body = serde_json::to_value(Scale { instances }).expect("Scale serializes");
        Self::need(
            self.call(
                Method::POST,
                &format!("/v1/sites/{}/scale", enc(name)),
                Some(body),
            )
            .await?,
        )
    }

    pub async fn delete_site(&self, name: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(Method::DELETE, &format!("/v1/sites/{}", enc(name)), None)
            .await
            .map(|_| ())
    }

    pub async fn list_workers(&self) -> Result<WorkerList, ClientError> {
        Self::need(self.call(Method::GET, "/v1/workers", None).await?)
    }
}

/// Percent-encodes a path segment so a hostile name can never change the URL's path.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("hello"), "hello");
        assert_eq!(enc("../x"), "..%2Fx");
        assert_eq!(enc("a b?c"), "a%20b%3Fc");
    }
}
