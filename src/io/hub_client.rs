//! The one HTTP client for the Hugging Face Hub: its settings, as `huggingface_hub` reads them, and the
//! requests themselves, with the shared retry policy ([`super::retry`]).
//!
//! Settings: `HF_ENDPOINT` (default `https://huggingface.co`), `HF_TOKEN` (sent as `Authorization: Bearer`
//! to the endpoint's own origin only, never logged or put in errors) and `HF_HUB_OFFLINE` (nothing is
//! sent). Dataset reads ([`super::hub_datasets`]) and pushes ([`super::hub_push`]) go through
//! [`HubClient`]; model downloads ([`crate::models::store`]) go through `hf-hub`, set up from the same
//! [`HubSettings`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::Semaphore;

use super::retry::{Class, Outcome, RetryPolicy, RetryStatuses, Step, Stop, classify, retry_after};

/// The Hub's address unless `HF_ENDPOINT` names another (a mirror, a test server).
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// HTTP requests in flight at once, across everything one client (and its clones) does.
const MAX_IN_FLIGHT: usize = 8;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest silence while reading an answer, unless [`HubClient::with_read_timeout`] says otherwise.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the Hub is and how to talk to it, from the environment as `huggingface_hub` reads it.
#[derive(Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// Without a trailing `/`.
    pub endpoint: String,
    pub token: Option<String>,
    pub offline: bool,
}

impl fmt::Debug for HubSettings {
    // The token stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubSettings")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .finish()
    }
}

impl HubSettings {
    /// `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE` (`1`, `true`, `yes` or `on`); blank values are unset.
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`from_env`](Self::from_env), reading variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let get = |name: &str| get(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
        HubSettings {
            endpoint: get("HF_ENDPOINT").map_or_else(|| DEFAULT_ENDPOINT.to_string(), |e| normal_endpoint(&e)),
            token: get("HF_TOKEN"),
            offline: get("HF_HUB_OFFLINE")
                .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")),
        }
    }
}

fn normal_endpoint(endpoint: &str) -> String {
    endpoint.trim().trim_end_matches('/').to_string()
}

/// A successful (or accepted) answer.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}

/// Why a request failed. Messages never hold the token.
#[derive(Debug)]
pub enum SendError {
    /// `HF_HUB_OFFLINE` is set: nothing was sent.
    Offline,
    /// The answer's status is a failure: final, or still retryable after the last attempt (`exhausted`).
    Status { reply: Reply, attempts: u32, exhausted: bool },
    /// No answer after `attempts`: connection failures, timeouts, bodies cut short.
    Network { message: String, attempts: u32 },
    /// The client itself cannot go on.
    Runtime(String),
}

/// One request for [`HubClient::send`].
pub struct HubRequest<'a> {
    pub method: Method,
    pub url: &'a Url,
    pub headers: HeaderMap,
    /// The body and its content type; kept in memory so that any attempt can resend it.
    pub body: Option<(Vec<u8>, &'static str)>,
    /// Statuses that are answers, not failures (e.g. 409 when a repo exists already).
    pub accepted: &'a [StatusCode],
}

impl<'a> HubRequest<'a> {
    pub fn new(method: Method, url: &'a Url) -> Self {
        HubRequest { method, url, headers: HeaderMap::new(), body: None, accepted: &[] }
    }

    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers = headers;
        self
    }

    pub fn body(mut self, bytes: Vec<u8>, content_type: &'static str) -> Self {
        self.body = Some((bytes, content_type));
        self
    }

    pub fn accepting(mut self, accepted: &'a [StatusCode]) -> Self {
        self.accepted = accepted;
        self
    }
}

/// Why one attempt is worth another.
enum Retryable {
    Network(String),
    Status(Reply),
}

/// A client for one Hub endpoint with one token. Clones share connections and the limit on requests in
/// flight.
#[derive(Clone)]
pub struct HubClient {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    offline: bool,
    retry: RetryPolicy,
    retry_on: RetryStatuses,
    in_flight: Arc<Semaphore>,
}

impl fmt::Debug for HubClient {
    // The token stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClient")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("offline", &self.offline)
            .field("retry", &self.retry)
            .finish()
    }
}

impl HubClient {
    /// A client set up from `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE`.
    pub fn from_env() -> Self {
        Self::from_settings(HubSettings::from_env())
    }

    /// As [`from_env`](Self::from_env), reading variables through `get`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        Self::from_settings(HubSettings::from_lookup(get))
    }

    pub fn from_settings(settings: HubSettings) -> Self {
        let mut client = Self::with_endpoint(&settings.endpoint, settings.token);
        client.offline = settings.offline;
        client
    }

    /// A client for `endpoint` (e.g. a mirror or a test server), with an optional access token.
    pub fn with_endpoint(endpoint: &str, token: Option<String>) -> Self {
        HubClient {
            http: http_client(READ_TIMEOUT),
            endpoint: normal_endpoint(endpoint),
            token: token.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()),
            offline: false,
            retry: RetryPolicy::default(),
            retry_on: RetryStatuses::HUB,
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    /// Replaces the retry policy (tests use short delays).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Replaces the statuses that are tried again ([`RetryStatuses::HUB`] by default).
    pub fn with_retry_statuses(mut self, statuses: RetryStatuses) -> Self {
        self.retry_on = statuses;
        self
    }

    /// Allows this long a silence while reading an answer (60 s by default; uploads wait longer).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.http = http_client(timeout);
        self
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn is_offline(&self) -> bool {
        self.offline
    }

    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// `{endpoint}/{segments...}`, each segment percent-encoded (a `/` in a revision becomes `%2F`). The
    /// error says what is wrong with the endpoint.
    pub fn url(&self, segments: &[&str]) -> Result<Url, String> {
        let mut url = Url::parse(&self.endpoint).map_err(|e| e.to_string())?;
        url.path_segments_mut().map_err(|()| "it cannot have a path".to_string())?.pop_if_empty().extend(segments);
        Ok(url)
    }

    /// `text` with the token blotted out, for messages that come from elsewhere (a server may echo it).
    pub fn scrub(&self, text: &str) -> String {
        match &self.token {
            Some(token) => text.replace(token.as_str(), "<token>"),
            None => text.to_string(),
        }
    }

    /// GET `url` (a byte `range` such as `bytes=0-99` when given), the body in memory.
    pub async fn get_bytes(&self, url: &Url, range: Option<&str>) -> Result<Reply, SendError> {
        let mut headers = HeaderMap::new();
        if let Some(range) = range.and_then(|r| r.parse().ok()) {
            headers.insert(reqwest::header::RANGE, range);
        }
        self.send(HubRequest::new(Method::GET, url).headers(headers)).await
    }

    /// GET `url` as JSON; `Ok(Err(_))` when the answer is not JSON.
    pub async fn get_json(&self, url: &Url) -> Result<Result<serde_json::Value, serde_json::Error>, SendError> {
        Ok(self.get_bytes(url, None).await?.json())
    }

    /// POST `body` (of `content_type`) to `url`; `accepted` statuses are answers, not failures.
    pub async fn post(
        &self,
        url: &Url,
        body: Vec<u8>,
        content_type: &'static str,
        accepted: &[StatusCode],
    ) -> Result<Reply, SendError> {
        self.send(HubRequest::new(Method::POST, url).body(body, content_type).accepting(accepted)).await
    }

    /// Sends a request, retrying transport failures and the retry statuses under the retry policy
    /// (honouring `Retry-After`). The token goes along only to the endpoint's origin, and only when the
    /// request brings no `Authorization` of its own. A permit on the requests in flight is held for each
    /// attempt and its body, never across a retry delay.
    pub async fn send(&self, request: HubRequest<'_>) -> Result<Reply, SendError> {
        if self.offline {
            return Err(SendError::Offline);
        }
        let HubRequest { method, url, headers, body, accepted } = request;
        let same_origin = Url::parse(&self.endpoint).is_ok_and(|endpoint| endpoint.origin() == url.origin());
        let send_token = same_origin && !headers.contains_key(AUTHORIZATION);
        let mut builder = self.http.request(method, url.clone()).headers(headers);
        if let (true, Some(token)) = (send_token, &self.token) {
            builder = builder.bearer_auth(token);
        }
        if let Some((bytes, content_type)) = body {
            builder = builder.header(CONTENT_TYPE, content_type).body(bytes);
        }
        let builder = &builder;
        let attempt = |number: u32| async move {
            // Bodies are in memory, so a request can always be cloned for another attempt.
            let Some(this_try) = builder.try_clone() else {
                return Step::Done(Err(SendError::Runtime("a request body cannot be resent".into())));
            };
            let _permit = match self.in_flight.acquire().await {
                Ok(permit) => permit,
                Err(e) => return Step::Done(Err(SendError::Runtime(e.to_string()))),
            };
            let network = |error: reqwest::Error| Step::Retry {
                reason: Retryable::Network(self.scrub(&describe(&error))),
                retry_after: None,
            };
            let response = match this_try.send().await {
                Ok(response) => response,
                Err(error) => return network(error),
            };
            let status = response.status();
            let headers = response.headers().clone();
            let body = match response.bytes().await {
                Ok(body) => body.to_vec(),
                Err(error) => return network(error),
            };
            let reply = Reply { status, headers, body };
            if status.is_success() || accepted.contains(&status) {
                return Step::Done(Ok(reply));
            }
            match classify(Outcome::Status(status.as_u16()), self.retry_on) {
                Class::Retry { .. } => {
                    let retry_after = retry_after(&reply.headers);
                    Step::Retry { reason: Retryable::Status(reply), retry_after }
                }
                _ => Step::Done(Err(SendError::Status { reply, attempts: number, exhausted: false })),
            }
        };
        let on_retry = |reason: &Retryable, number: u32, wait: Duration| match reason {
            Retryable::Network(message) => {
                tracing::debug!(url = %shown(url), attempt = number, ?wait, "retrying after: {message}");
            }
            Retryable::Status(reply) => {
                tracing::debug!(url = %shown(url), attempt = number, ?wait, status = reply.status.as_u16(), "retrying");
            }
        };
        match self.retry.retrier().run(attempt, on_retry).await {
            Ok(reply) => Ok(reply),
            Err(Stop::Failed(error)) => Err(error),
            Err(Stop::Exhausted { reason: Retryable::Network(message), attempts }) => {
                Err(SendError::Network { message, attempts })
            }
            Err(Stop::Exhausted { reason: Retryable::Status(reply), attempts }) => {
                Err(SendError::Status { reply, attempts, exhausted: true })
            }
        }
    }
}

fn http_client(read_timeout: Duration) -> reqwest::Client {
    // Any TLS provider must be installed once per process before the first client is built.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(read_timeout)
        .user_agent(concat!("sdg/", env!("CARGO_PKG_VERSION")))
        .build()
        // Building fails only when TLS cannot start, which the provider installed above rules out.
        .unwrap_or_default()
}

/// A URL as errors and logs show it: without its query and credentials (storage URLs carry signatures).
pub fn shown(url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.to_string()
}

/// A request error in words: its kind and causes, without the URL (the caller names it) or headers.
pub fn describe(error: &reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "cannot connect"
    } else {
        "request failed"
    };
    // Without the URL (the caller names it) and never with headers, so no token.
    let mut text = kind.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn vars(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string())
    }

    #[test]
    fn settings_come_from_the_environment() {
        let settings = HubSettings::from_lookup(vars(&[]));
        assert_eq!(settings, HubSettings { endpoint: DEFAULT_ENDPOINT.into(), token: None, offline: false });
        let settings = HubSettings::from_lookup(vars(&[
            ("HF_ENDPOINT", " http://127.0.0.1:9/ "),
            ("HF_TOKEN", "hf_secret"),
            ("HF_HUB_OFFLINE", "Yes"),
        ]));
        assert_eq!(settings.endpoint, "http://127.0.0.1:9");
        assert_eq!(settings.token.as_deref(), Some("hf_secret"));
        assert!(settings.offline);
        assert!(!format!("{settings:?}").contains("hf_secret"));
        let blank =
            HubSettings::from_lookup(vars(&[("HF_ENDPOINT", "  "), ("HF_TOKEN", " "), ("HF_HUB_OFFLINE", "0")]));
        assert_eq!(blank, HubSettings { endpoint: DEFAULT_ENDPOINT.into(), token: None, offline: false });

        let client = HubClient::from_settings(settings);
        assert!(client.is_offline() && client.has_token());
        assert!(!format!("{client:?}").contains("hf_secret"));
        assert_eq!(client.scrub("echo hf_secret"), "echo <token>");
    }

    #[test]
    fn urls_encode_segments() {
        let client = HubClient::with_endpoint("http://hub.test/mirror/", None);
        let url = client.url(&["api", "datasets", "a", "b", "revision", "refs/convert/parquet"]).unwrap();
        assert_eq!(url.as_str(), "http://hub.test/mirror/api/datasets/a/b/revision/refs%2Fconvert%2Fparquet");
        assert!(HubClient::with_endpoint("not a url", None).url(&["x"]).is_err());
        let signed = Url::parse("https://u:p@storage.test/bucket/obj?X-Amz-Signature=abc#f").unwrap();
        assert_eq!(shown(&signed), "https://storage.test/bucket/obj");
    }

    /// A server answering each connection with the next of `responses` (the last one repeats), recording
    /// the requests.
    fn serve(responses: &'static [&'static str]) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let served = AtomicUsize::new(0);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut buffer = [0u8; 8192];
                let n = stream.read(&mut buffer).unwrap_or(0);
                log.lock().unwrap().push(String::from_utf8_lossy(&buffer[..n]).to_string());
                let i = served.fetch_add(1, Ordering::Relaxed).min(responses.len() - 1);
                let _ = stream.write_all(responses[i].as_bytes());
            }
        });
        (format!("http://{address}"), seen)
    }

    fn quick() -> RetryPolicy {
        RetryPolicy { attempts: 3, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(5) }
    }

    const BUSY: &str =
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 0\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbusy";
    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"a\": true}";
    const GONE: &str = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

    #[tokio::test]
    async fn retries_then_answers_with_the_token_on_the_endpoint_only() {
        let (endpoint, seen) = serve(&[BUSY, BUSY, OK]);
        let client = HubClient::with_endpoint(&endpoint, Some("hf_secret".into())).with_retry(quick());
        let url = client.url(&["api", "x"]).unwrap();
        let value = client.get_json(&url).await.unwrap().unwrap();
        assert_eq!(value, serde_json::json!({"a": true}));
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 3);
            assert!(
                seen.iter().all(|r| r.contains("authorization: Bearer hf_secret") && r.contains("user-agent: sdg/"))
            );
        }

        // Another origin (a storage URL) never gets the token.
        let (other, seen) = serve(&[OK]);
        let url = Url::parse(&format!("{other}/bucket")).unwrap();
        client.get_bytes(&url, Some("bytes=0-3")).await.unwrap();
        let seen = seen.lock().unwrap();
        assert!(!seen[0].contains("hf_secret") && seen[0].contains("range: bytes=0-3"), "{}", seen[0]);
    }

    #[tokio::test]
    async fn failures_say_how_many_attempts_they_took() {
        let (endpoint, seen) = serve(&[BUSY]);
        let client = HubClient::with_endpoint(&endpoint, None).with_retry(quick());
        let url = client.url(&["x"]).unwrap();
        match client.get_bytes(&url, None).await {
            Err(SendError::Status { reply, attempts: 3, exhausted: true }) => assert_eq!(reply.body, b"busy"),
            other => panic!("{other:?}"),
        }
        assert_eq!(seen.lock().unwrap().len(), 3);

        let (endpoint, seen) = serve(&[GONE]);
        let client = HubClient::with_endpoint(&endpoint, None).with_retry(quick());
        let url = client.url(&["x"]).unwrap();
        assert!(matches!(
            client.get_bytes(&url, None).await,
            Err(SendError::Status { attempts: 1, exhausted: false, .. })
        ));
        let reply = client.post(&url, b"{}".to_vec(), "application/json", &[StatusCode::NOT_FOUND]).await.unwrap();
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "an accepted status is an answer");
        assert!(seen.lock().unwrap()[1].starts_with("POST /x"));

        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let client = HubClient::with_endpoint(&format!("http://127.0.0.1:{port}"), None).with_retry(quick());
        let url = client.url(&["x"]).unwrap();
        match client.get_bytes(&url, None).await {
            Err(SendError::Network { message, attempts: 3 }) => assert!(message.contains("connect"), "{message}"),
            other => panic!("{other:?}"),
        }

        let offline = HubClient::from_settings(HubSettings { endpoint, token: None, offline: true });
        assert!(matches!(offline.get_bytes(&url, None).await, Err(SendError::Offline)));
    }
}
