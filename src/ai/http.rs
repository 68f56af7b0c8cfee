//! One HTTP exchange with a provider, under a deadline, that a cancel interrupts. The request runs
//! on a thread of its own (signals blocked, no PostgreSQL call); the backend waits for it in short
//! slices and handles interrupts between them, so a cancel or statement_timeout ends the wait at
//! once. A thread left behind by a cancel finishes or times out on its own and drops the answer.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The largest answer custos reads (embeddings of a big batch are a few MB).
const MAX_BODY_BYTES: u64 = 32 << 20;

pub struct Request {
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `x-amzn-ErrorType` (Bedrock's error class).
    pub error_type: Option<String>,
    pub retry_after: Option<String>,
}

/// Why no response came back. Messages name the endpoint's host at most: never a header or body.
#[derive(Debug)]
pub enum Failure {
    Timeout,
    Connection(String),
}

/// One agent per backend: its pool keeps connections alive between calls (TLS set up once).
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            // A redirect would carry the request (and a bearer key) elsewhere.
            .max_redirects(0)
            .user_agent("custos")
            .build()
            .into()
    })
}

fn exchange(request: Request, timeout: Duration) -> Result<Response, Failure> {
    let mut builder = agent()
        .post(&request.url)
        .config()
        .timeout_global(Some(timeout))
        .build();
    for (name, value) in &request.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let mut response = builder.send(&request.body[..]).map_err(|e| match e {
        ureq::Error::Timeout(_) => Failure::Timeout,
        other => Failure::Connection(kind_of(&other)),
    })?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (error_type, retry_after) = (header("x-amzn-errortype"), header("retry-after"));
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_vec()
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => Failure::Timeout,
            other => Failure::Connection(kind_of(&other)),
        })?;
    Ok(Response {
        status,
        body,
        error_type,
        retry_after,
    })
}

/// A transport error's class, without the URL or anything sent.
fn kind_of(e: &ureq::Error) -> String {
    match e {
        ureq::Error::Io(io) => format!("connection error ({})", io.kind()),
        ureq::Error::HostNotFound => "host not found".into(),
        ureq::Error::ConnectionFailed => "connection failed".into(),
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => "TLS error".into(),
        ureq::Error::BodyExceedsLimit(_) => "answer larger than 32 MB".into(),
        _ => "protocol error".into(),
    }
}

/// Sends `request`, waiting at most until `deadline`; interrupts (cancel, statement_timeout,
/// termination) are handled while waiting.
pub fn send(request: Request, deadline: Instant) -> Result<Response, Failure> {
    let timeout = deadline.saturating_duration_since(Instant::now());
    if timeout.is_zero() {
        return Err(Failure::Timeout);
    }
    let (tx, rx) = mpsc::channel();
    let spawned = crate::pg::threads::spawn_detached_quiet("custos-http", move || {
        let _ = tx.send(exchange(request, timeout));
    });
    if !spawned {
        return Err(Failure::Connection("could not start a thread".into()));
    }
    loop {
        pgrx::check_for_interrupts!();
        match rx.recv_timeout(Duration::from_millis(10)) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The exchange has its own timeout; this is a margin for a stuck resolver.
                if Instant::now() > deadline + Duration::from_secs(1) {
                    return Err(Failure::Timeout);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(Failure::Connection("the request thread ended".into()))
            }
        }
    }
}

/// Waits `duration` (a retry's backoff), handling interrupts meanwhile.
pub fn pause(duration: Duration) {
    let until = Instant::now() + duration;
    loop {
        pgrx::check_for_interrupts!();
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(10)));
    }
}
