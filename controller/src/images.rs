//! Image checks at site creation, behind the [`ImageResolver`] seam.
//!
//! The real resolver ([`RegistryResolver`]) asks the registry for the manifest and
//! config with the `berth-images` client; a fake exists only for unit tests. Creating
//! a site needs three answers: does the image exist, is the registry reachable, and
//! does the image say what to run. The answer is the reference pinned by digest.

use futures::future::BoxFuture;
use std::net::IpAddr;
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ImageError {
    #[error("image reference {image:?} is invalid: {reason}")]
    InvalidReference { image: String, reason: String },
    #[error("image {image} not found: check the name and tag, and that it was pushed")]
    NotFound { image: String },
    #[error("registry refused access to image {image}: {detail}")]
    Unauthorized { image: String, detail: String },
    #[error("registry {registry} is unreachable for image {image}: {detail}: check that the registry is running and reachable from the controller")]
    Unreachable {
        image: String,
        registry: String,
        detail: String,
    },
    #[error("image {image} has no entrypoint or cmd: set one in the image config")]
    NoCommand { image: String },
    #[error("image {image} could not be read from its registry: {detail}")]
    Unreadable { image: String, detail: String },
}

/// What to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRequest {
    pub image: String,
    pub insecure: bool,
    /// `user:password`, if any.
    pub auth: Option<String>,
}

/// A resolved image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `host/repo@sha256:...`
    pub pinned: String,
    /// Entrypoint followed by cmd; `None` when the image sets neither.
    pub command: Option<Vec<String>>,
}

/// Resolves image references against their registries.
pub trait ImageResolver: Send + Sync + 'static {
    /// The registry host (`host[:port]`) a reference points at.
    fn registry_host(&self, image: &str) -> Result<String, ImageError>;

    /// Fetches manifest and config of `req.image`.
    fn resolve<'a>(
        &'a self,
        req: &'a ResolveRequest,
    ) -> BoxFuture<'a, Result<ResolvedImage, ImageError>>;
}

/// Resolves the image and checks it can run; returns the pinned reference.
#[tracing::instrument(skip_all, fields(image = %req.image))]
pub async fn check_image(
    resolver: &dyn ImageResolver,
    req: &ResolveRequest,
) -> Result<String, ImageError> {
    let resolved = resolver.resolve(req).await?;
    match resolved.command {
        Some(cmd) if !cmd.is_empty() => Ok(resolved.pinned),
        _ => Err(ImageError::NoCommand {
            image: req.image.clone(),
        }),
    }
}

/// Plain HTTP is the default only for registries on the loopback interface.
pub fn default_insecure(registry_host: &str) -> bool {
    let host = if let Some(rest) = registry_host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else if registry_host.matches(':').count() == 1 {
        registry_host.split(':').next().unwrap_or(registry_host)
    } else {
        registry_host
    };
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
pub(crate) mod fake {
    //! A resolver answering from a fixed table, for unit tests only.
    use super::*;
    use std::collections::HashMap;

    #[derive(Default)]
    pub struct FakeResolver {
        pub images: HashMap<String, Result<ResolvedImage, ImageError>>,
    }

    impl ImageResolver for FakeResolver {
        fn registry_host(&self, image: &str) -> Result<String, ImageError> {
            Ok(image.split('/').next().unwrap_or_default().to_string())
        }

        fn resolve<'a>(
            &'a self,
            req: &'a ResolveRequest,
        ) -> BoxFuture<'a, Result<ResolvedImage, ImageError>> {
            Box::pin(async move {
                self.images.get(&req.image).cloned().unwrap_or_else(|| {
                    Err(ImageError::NotFound {
                        image: req.image.clone(),
                    })
                })
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeResolver;
    use super::*;

    fn req(image: &str) -> ResolveRequest {
        ResolveRequest {
            image: image.into(),
            insecure: true,
            auth: None,
        }
    }

    #[test]
    fn loopback_registries_default_to_insecure() {
        for h in [
            "127.0.0.1:5000",
            "localhost:5000",
            "localhost",
            "[::1]:5000",
            "::1",
            "127.0.0.2",
        ] {
            assert!(default_insecure(h), "{h}");
        }
        for h in [
            "docker.io",
            "registry.example.com:5000",
            "10.0.0.1:5000",
            "[fe80::1]:5000",
        ] {
            assert!(!default_insecure(h), "{h}");
        }
    }

    #[tokio::test]
    async fn image_without_command_is_rejected() {
        let mut f = FakeResolver::default();
        f.images.insert(
            "r/a:1".into(),
            Ok(ResolvedImage {
                pinned: "r/a@sha256:00".into(),
                command: None,
            }),
        );
        f.images.insert(
            "r/b:1".into(),
            Ok(ResolvedImage {
                pinned: "r/b@sha256:11".into(),
                command: Some(vec!["/bin/httpd".into()]),
            }),
        );
        let err = check_image(&f, &req("r/a:1")).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "image r/a:1 has no entrypoint or cmd: set one in the image config"
        );
        assert_eq!(
            check_image(&f, &req("r/b:1")).await.unwrap(),
            "r/b@sha256:11"
        );
        let err = check_image(&f, &req("r/c:1")).await.unwrap_err();
        assert!(matches!(err, ImageError::NotFound { .. }));
    }
}
