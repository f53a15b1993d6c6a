//! The real [`ImageResolver`]: asks the image's registry through the `berth-images`
//! distribution client, and maps its errors to what the REST API reports
//! (not found / unauthorized / unreachable / unreadable).

use berth_images::client::{ClientError, ClientOptions, RegistryClient};
use berth_images::reference::Reference;
use futures::future::BoxFuture;

use crate::images::{ImageError, ImageResolver, ResolveRequest, ResolvedImage};

/// Resolves images against real registries; one short-lived client per request,
/// since TLS mode and credentials are per site.
#[derive(Debug, Default, Clone)]
pub struct RegistryResolver {
    /// PEM file of extra CA certificates for HTTPS registries (`--registry-ca`).
    pub ca_file: Option<std::path::PathBuf>,
}

fn parse(image: &str) -> Result<Reference, ImageError> {
    image
        .parse::<Reference>()
        .map_err(|e| ImageError::InvalidReference {
            image: image.to_string(),
            reason: e.to_string(),
        })
}

fn map_error(image: &str, registry: &str, e: ClientError) -> ImageError {
    let image = image.to_string();
    match e {
        ClientError::NotFound { .. } => ImageError::NotFound { image },
        ClientError::Registry { status: 404, .. } => ImageError::NotFound { image },
        ClientError::Unauthorized { detail, .. } => ImageError::Unauthorized {
            image,
            detail: format!(
                "{detail}: log in with `berth registry login {registry}` and try again \
                 (or pass --registry-auth user:password)"
            ),
        },
        ClientError::Unreachable { detail, .. } | ClientError::Transfer { detail, .. } => {
            ImageError::Unreachable {
                image,
                registry: registry.to_string(),
                detail,
            }
        }
        e @ ClientError::Registry { status, .. } if status >= 500 => ImageError::Unreachable {
            image,
            registry: registry.to_string(),
            detail: e.to_string(),
        },
        other => ImageError::Unreadable {
            image,
            detail: other.to_string(),
        },
    }
}

impl ImageResolver for RegistryResolver {
    fn registry_host(&self, image: &str) -> Result<String, ImageError> {
        Ok(parse(image)?.registry().to_string())
    }

    fn resolve<'a>(
        &'a self,
        req: &'a ResolveRequest,
    ) -> BoxFuture<'a, Result<ResolvedImage, ImageError>> {
        Box::pin(async move {
            let reference = parse(&req.image)?;
            let auth = req.auth.as_deref().map(|a| {
                let (user, password) = a.split_once(':').unwrap_or((a, ""));
                (user.to_string(), password.to_string())
            });
            let client = RegistryClient::new(ClientOptions {
                insecure: req.insecure,
                auth,
                ca_file: self.ca_file.clone(),
            })
            .map_err(|e| ImageError::Unreadable {
                image: req.image.clone(),
                detail: e.to_string(),
            })?;
            let resolved = client
                .resolve(&reference)
                .await
                .map_err(|e| map_error(&req.image, reference.registry(), e))?;
            Ok(ResolvedImage {
                pinned: resolved.pinned.to_string(),
                command: resolved.config.command(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_host_and_bad_references() {
        let r = RegistryResolver::default();
        assert_eq!(
            r.registry_host("127.0.0.1:5000/hello:1").unwrap(),
            "127.0.0.1:5000"
        );
        assert!(matches!(
            r.registry_host("Not A Ref"),
            Err(ImageError::InvalidReference { .. })
        ));
    }

    #[tokio::test]
    async fn closed_port_is_unreachable() {
        // Bind then drop to get a port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let req = ResolveRequest {
            image: format!("127.0.0.1:{port}/hello:1"),
            insecure: true,
            auth: None,
        };
        let err = RegistryResolver::default().resolve(&req).await.unwrap_err();
        assert!(matches!(err, ImageError::Unreachable { .. }), "{err:?}");
    }
}
