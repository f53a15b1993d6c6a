//! REST errors: every non-2xx answer is an `ApiError {code, message}` body, and JSON
//! body problems (bad syntax, unknown field, wrong type) become 400 `invalid_request`
//! with serde's own message. Internal failures are logged in full but answered with
//! a generic message, so paths and SQL never reach API clients.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use berth_api::rest::ApiError;

use crate::images::ImageError;
use crate::store::StoreError;

/// An error answer: status plus `ApiError` body.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiFailure {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn site_not_found(name: &str) -> Self {
        Self::not_found(format!(
            "site {name:?} not found: list sites with GET /v1/sites"
        ))
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = ApiError {
            code: self.code.to_string(),
            message: self.message,
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiFailure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::SiteExists(_) => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            StoreError::IdRangesExhausted(_) => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "id_ranges_exhausted",
                e.to_string(),
            ),
            other => {
                tracing::error!(error = %other, "state database failure");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error in the controller's state database: see the controller log",
                )
            }
        }
    }
}

impl From<ImageError> for ApiFailure {
    fn from(e: ImageError) -> Self {
        let (status, code) = match &e {
            ImageError::InvalidReference { .. } => (StatusCode::BAD_REQUEST, "invalid_request"),
            ImageError::Unreachable { .. } => (StatusCode::BAD_GATEWAY, "registry_unreachable"),
            ImageError::NotFound { .. }
            | ImageError::Unauthorized { .. }
            | ImageError::NoCommand { .. }
            | ImageError::Unreadable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "bad_image"),
        };
        Self::new(status, code, e.to_string())
    }
}

/// `Json<T>` whose rejection is an `ApiError` body.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiFailure;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => {
                let hint = match &rejection {
                    JsonRejection::MissingJsonContentType(_) => {
                        "send the body as JSON with content-type application/json"
                    }
                    _ => "fix the request body (see the API reference for the fields)",
                };
                Err(ApiFailure::invalid(format!(
                    "{}: {hint}",
                    rejection.body_text()
                )))
            }
        }
    }
}
