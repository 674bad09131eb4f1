//! Responses the proxy writes itself: errors in the calling provider's
//! shape, so SDKs surface them like the provider's own.

use http::{HeaderValue, Response, StatusCode};

use crate::body::{full, ProxyBody};

/// Which provider's error shape a path expects.
fn is_anthropic_path(path: &str) -> bool {
    path.starts_with("/v1/messages")
        || (path.starts_with("/v1/complete") && !path.starts_with("/v1/completions"))
}

/// An error response in the provider's JSON error shape.
pub fn error(path: &str, status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(error_body(path, status, message)));
    *response.status_mut() = status;
    *response.headers_mut() = error_headers();
    response
}

/// The headers of [`error`]: a JSON body the proxy wrote itself.
pub fn error_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-relaycache-error", HeaderValue::from_static("1"));
    headers
}

/// The body of [`error`].
pub fn error_body(path: &str, status: StatusCode, message: &str) -> bytes::Bytes {
    let body = if is_anthropic_path(path) {
        let kind = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "request_too_large",
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "api_error",
        };
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
    } else {
        let kind = if status.is_client_error() {
            "invalid_request_error"
        } else {
            "server_error"
        };
        serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": null}})
    };
    bytes::Bytes::from(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json(r: Response<ProxyBody>) -> serde_json::Value {
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn anthropic_and_openai_shapes() {
        let a = json(error(
            "/v1/messages",
            StatusCode::PAYLOAD_TOO_LARGE,
            "too big",
        ))
        .await;
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "request_too_large");
        assert_eq!(a["error"]["message"], "too big");
        let o = json(error(
            "/v1/chat/completions",
            StatusCode::BAD_GATEWAY,
            "down",
        ))
        .await;
        assert_eq!(o["error"]["type"], "server_error");
        assert_eq!(o["error"]["message"], "down");
    }
}
