//! A scripted apiserver for tests: a `kube::Client` whose requests arrive
//! here one by one (through `tower_test`), so a test asserts each request
//! (method, path, query, body) and writes the answer. Used where a real
//! apiserver cannot run inside `cargo test`; the e2e suite covers the real one.

use std::collections::BTreeMap;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

/// The apiserver side of a mocked client.
pub(crate) struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

/// One request received, waiting for its answer.
pub(crate) struct Call {
    /// HTTP method.
    pub(crate) method: Method,
    /// Path without the query.
    pub(crate) path: String,
    /// Query parameters.
    pub(crate) query: BTreeMap<String, String>,
    /// `Content-Type` header.
    pub(crate) content_type: String,
    /// JSON body (`Null` when empty).
    pub(crate) body: Value,
    send: SendResponse<Response<Body>>,
}

impl ApiServer {
    /// A client wired to a new scripted apiserver.
    pub(crate) fn start() -> (Client, ApiServer) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), ApiServer { handle })
    }

    /// The next request, whatever it is.
    pub(crate) async fn next(&mut self) -> Call {
        let (request, send) = self
            .handle
            .next_request()
            .await
            .expect("the client was dropped before sending the expected request");
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        let query = parts
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                (k.to_string(), v.to_string())
            })
            .collect();
        Call {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query,
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string(),
            body,
            send,
        }
    }

    /// The next request, which must have this method and path.
    pub(crate) async fn expect(&mut self, method: Method, path: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (&call.method, call.path.as_str()),
            (&method, path),
            "unexpected request; body: {}",
            call.body
        );
        call
    }

    /// Asserts the client sends nothing more: it has been dropped (its task
    /// finished) without another request.
    pub(crate) async fn expect_nothing_more(&mut self) {
        if let Some((request, _)) = self.handle.next_request().await {
            panic!("unexpected request {} {}", request.method(), request.uri());
        }
    }
}

impl Call {
    /// Answers 200 with this JSON.
    pub(crate) async fn respond(self, body: Value) {
        self.answer(StatusCode::OK, body);
    }

    /// Answers 404 Not Found.
    pub(crate) async fn not_found(self) {
        self.status(StatusCode::NOT_FOUND, "NotFound");
    }

    /// Answers 409 Conflict.
    pub(crate) async fn conflict(self) {
        self.status(StatusCode::CONFLICT, "Conflict");
    }

    /// Answers with an apiserver `Status` error.
    pub(crate) fn status(self, code: StatusCode, reason: &str) {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": format!("{reason} (scripted)"),
            "reason": reason, "code": code.as_u16()
        });
        self.answer(code, body);
    }

    fn answer(self, code: StatusCode, body: Value) {
        let response = Response::builder()
            .status(code)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
            .expect("response");
        self.send.send_response(response);
    }
}
