//! A mock Amazon Bedrock runtime (plus an OpenAI-compatible API) over plain HTTP on 127.0.0.1, so
//! tests and benchmarks drive custos's AI calls without the network.
//!
//! It checks AWS Signature Version 4 with its own implementation, written from AWS's spec and
//! tested against AWS's published vectors, so the product's signer is checked against something
//! independent of it (not the aws-sigv4 crate, not the product's code).
//!
//! std networking only: a thread per connection, HTTP/1.1 keep-alive (ureq pools connections).

use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const TEST_ACCESS_KEY_ID: &str = "AKIDCUSTOSTEST000001";
pub const TEST_SECRET_ACCESS_KEY: &str = "custos-test-secret-key-0123456789abcdefABCD";
pub const TEST_BEARER_KEY: &str = "custos-test-bedrock-api-key";
pub const DEFAULT_ANSWER: &str = r#"{"summary": "ok"}"#;

/// The service name Bedrock runtime signs with.
const SERVICE: &str = "bedrock";
/// AWS refuses requests whose X-Amz-Date is further than this from its clock.
const MAX_SKEW_S: u64 = 15 * 60;
const MAX_LINE: u64 = 16 * 1024;
const MAX_HEADERS: usize = 200;
const MAX_BODY: usize = 64 * 1024 * 1024;
const AWS_ERR_BEDROCK: &str = ":http://internal.amazon.com/coral/com.amazon.bedrock/";
const AWS_ERR_CORAL: &str = ":http://internal.amazon.com/coral/com.amazon.coral.service/";

/// Which credentials the mock accepts.
#[derive(Clone, Debug)]
pub struct MockConfig {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When set, SigV4 requests must carry (and sign) `X-Amz-Security-Token` equal to it.
    pub session_token: Option<String>,
    pub region: String,
    /// Accepted `Authorization: Bearer <key>`: Bedrock API keys and OpenAI-compatible keys.
    pub bearer_keys: Vec<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            access_key_id: TEST_ACCESS_KEY_ID.into(),
            secret_access_key: TEST_SECRET_ACCESS_KEY.into(),
            session_token: None,
            region: "us-east-1".into(),
            bearer_keys: vec![TEST_BEARER_KEY.into()],
        }
    }
}

/// How the mock answers one (authenticated, routed) request; see [`MockBedrock::script`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Normal,
    /// 429 ThrottlingException, with `Retry-After` when given.
    Throttle {
        retry_after_s: Option<u32>,
    },
    /// 429 ModelNotReadyException.
    ModelNotReady,
    /// 500 InternalServerException, 503 ServiceUnavailableException (other codes: the former).
    ServerError(u16),
    /// 400 ValidationException.
    Validation,
    /// Reads the request, sleeps `ms`, then answers normally: to exceed client timeouts.
    Stall {
        ms: u64,
    },
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 of the normal shape, with this model text instead of the configured answer.
    Answer(String),
}

/// One request as received, and what the mock made of it.
#[derive(Clone, Debug)]
pub struct Captured {
    pub method: String,
    /// The request target as sent (path and query, still percent-encoded).
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Authenticated: a valid SigV4 signature, or an accepted bearer key.
    pub signature_ok: bool,
    /// Status and what happened, e.g. `200 ok`, `429 throttled`, `403 InvalidSignatureException: ...`.
    pub outcome: String,
}

impl Captured {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The body as JSON, if it is.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

struct State {
    /// Each with an id, so a request recorded on arrival can be completed later.
    requests: Vec<(u64, Captured)>,
    next_id: u64,
    script: VecDeque<Reply>,
    delay_ms: u64,
    answer: String,
    rejected: usize,
}

struct Shared {
    config: MockConfig,
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    /// A panicking test thread must not take the mock down with it: ignore poisoning.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a request on arrival, so a stalled one is visible while it stalls.
    fn record(&self, c: Captured) -> u64 {
        let mut s = self.state();
        let id = s.next_id;
        s.next_id += 1;
        s.requests.push((id, c));
        id
    }

    fn finish(&self, id: u64, h: &Handled) {
        let mut s = self.state();
        if h.rejected {
            s.rejected += 1;
        }
        if let Some((_, c)) = s.requests.iter_mut().rev().find(|(i, _)| *i == id) {
            c.signature_ok = h.authenticated;
            c.outcome = h.outcome.clone();
        }
    }

    fn next_reply(&self) -> Reply {
        self.state().script.pop_front().unwrap_or(Reply::Normal)
    }
}

/// A running mock server; it stops accepting when dropped.
pub struct MockBedrock {
    shared: Arc<Shared>,
    addr: SocketAddr,
    acceptor: Option<JoinHandle<()>>,
}

impl MockBedrock {
    /// Starts on a free port of 127.0.0.1.
    pub fn start(config: MockConfig) -> MockBedrock {
        MockBedrock::start_on(config, 0)
    }

    /// Starts on `port` of 127.0.0.1 (0: a free one).
    pub fn start_on(config: MockConfig, port: u16) -> MockBedrock {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("mock bedrock: bind 127.0.0.1:{port}: {e}"));
        let addr = listener.local_addr().expect("mock bedrock: local address");
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(State {
                requests: Vec::new(),
                next_id: 0,
                script: VecDeque::new(),
                delay_ms: 0,
                answer: DEFAULT_ANSWER.into(),
                rejected: 0,
            }),
            stop: AtomicBool::new(false),
        });
        let accepting = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name("mock-bedrock".into())
            .spawn(move || accept(listener, accepting))
            .expect("mock bedrock: spawn");
        MockBedrock {
            shared,
            addr,
            acceptor: Some(acceptor),
        }
    }

    /// `http://127.0.0.1:PORT`, the endpoint to give custos.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn config(&self) -> &MockConfig {
        &self.shared.config
    }

    /// Every request received, in order of arrival, rejected ones included.
    pub fn requests(&self) -> Vec<Captured> {
        let s = self.shared.state();
        s.requests.iter().map(|(_, c)| c.clone()).collect()
    }

    /// Forgets the requests received and the rejection count (not the script, delay or answer).
    pub fn clear(&self) {
        let mut s = self.shared.state();
        s.requests.clear();
        s.rejected = 0;
    }

    /// Queues behaviours for the next authenticated requests, in order (after any queued
    /// already); then back to [`Reply::Normal`]. Rejected and unrouted requests take none.
    pub fn script(&self, replies: Vec<Reply>) {
        self.shared.state().script.extend(replies);
    }

    /// Every 200 answer waits this long first.
    pub fn set_delay_ms(&self, ms: u64) {
        self.shared.state().delay_ms = ms;
    }

    /// The text Claude and chat completions answer with.
    pub fn set_answer(&self, text: impl Into<String>) {
        self.shared.state().answer = text.into();
    }

    /// How many requests failed authentication (signature, key, token or clock).
    pub fn rejected(&self) -> usize {
        self.shared.state().rejected
    }
}

impl Drop for MockBedrock {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept(listener: TcpListener, shared: Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = conn else {
            // E.g. out of file descriptors: back off rather than spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("mock-bedrock-conn".into())
            .spawn(move || serve(stream, &shared));
    }
}

/// Reads from the socket in short slices so an idle keep-alive connection notices the mock
/// stopping; otherwise waits as long as the client likes (ureq keeps idle connections 15 s).
struct Watch<'a> {
    stream: TcpStream,
    stop: &'a AtomicBool,
}

impl Read for Watch<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.stop.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                }
                other => return other,
            }
        }
    }
}

/// One connection: requests until EOF, `Connection: close`, a bad request or the mock stopping.
fn serve(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(250)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = stream.try_clone() else {
        return;
    };
    let mut input = BufReader::new(Watch {
        stream,
        stop: &shared.stop,
    });
    loop {
        let req = match read_request(&mut input, &mut out) {
            Ok(Some(req)) => req,
            Ok(None) | Err(ReadError::Io) => return,
            Err(ReadError::Bad(why)) => {
                let h = Handled::plain(
                    400,
                    json!({"message": format!("bad request: {why}")}),
                    format!("400 bad request: {why}"),
                );
                let id = shared.record(Captured {
                    method: String::new(),
                    path: String::new(),
                    headers: Vec::new(),
                    body: Vec::new(),
                    signature_ok: false,
                    outcome: String::new(),
                });
                shared.finish(id, &h);
                let _ = out.write_all(&h.response.to_bytes(false));
                return;
            }
        };
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let keep_alive = req.keep_alive();
        let id = shared.record(Captured {
            method: req.method.clone(),
            path: req.target.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
            signature_ok: false,
            outcome: "pending".into(),
        });
        let h = handle(shared, &req);
        shared.finish(id, &h);
        if h.wait_ms > 0 {
            // Only this connection's thread waits; the others go on serving.
            std::thread::sleep(Duration::from_millis(h.wait_ms));
        }
        let sent = out
            .write_all(&h.response.to_bytes(keep_alive))
            .and_then(|()| out.flush());
        if sent.is_err() || !keep_alive {
            return;
        }
    }
}

// ---- HTTP/1.1 -------------------------------------------------------------------------------

/// A request as another test server (the webhook receiver) gets it.
pub(crate) struct PlainRequest {
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// One request read from `stream`; None if the connection closed or the request was not HTTP.
pub(crate) fn read_one_request(stream: &TcpStream) -> Option<PlainRequest> {
    let mut out = stream.try_clone().ok()?;
    let mut input = BufReader::new(stream.try_clone().ok()?);
    match read_request(&mut input, &mut out) {
        Ok(Some(r)) => Some(PlainRequest {
            target: r.target,
            headers: r.headers,
            body: r.body,
        }),
        _ => None,
    }
}

/// The bytes of a JSON answer with `status`, closing the connection.
pub(crate) fn json_answer(status: u16, body: &Value) -> Vec<u8> {
    Response::json(status, body).to_bytes(false)
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    fn keep_alive(&self) -> bool {
        let conn = self.header("connection").unwrap_or("").to_ascii_lowercase();
        let has = |t: &str| conn.split(',').any(|c| c.trim() == t);
        if has("close") {
            false
        } else {
            self.version != "HTTP/1.0" || has("keep-alive")
        }
    }
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

enum ReadError {
    /// The connection failed or the mock is stopping: just close.
    Io,
    /// Not HTTP we accept: answer 400 and close.
    Bad(String),
}

impl From<io::Error> for ReadError {
    fn from(_: io::Error) -> Self {
        ReadError::Io
    }
}

fn bad<T>(why: impl Into<String>) -> Result<T, ReadError> {
    Err(ReadError::Bad(why.into()))
}

/// A line without its CRLF; `None` at EOF before any byte.
fn read_line(input: &mut impl BufRead) -> Result<Option<String>, ReadError> {
    let mut buf = Vec::new();
    let n = input.by_ref().take(MAX_LINE).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return if n as u64 >= MAX_LINE {
            bad("line too long")
        } else {
            Err(ReadError::Io)
        };
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

fn read_request(
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> Result<Option<Request>, ReadError> {
    // A client may send a stray CRLF between requests (RFC 9112 2.2).
    let line = loop {
        match read_line(input)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let parts: Vec<&str> = line.split(' ').collect();
    let [method, target, version] = parts[..] else {
        return bad(format!("request line {line:?}"));
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') || method.is_empty() {
        return bad(format!("request line {line:?}"));
    }
    let mut headers = Vec::new();
    loop {
        let Some(line) = read_line(input)? else {
            return Err(ReadError::Io);
        };
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            return bad("obsolete header folding");
        }
        let Some((name, value)) = line.split_once(':') else {
            return bad(format!("header line {line:?}"));
        };
        if name.is_empty() || name.contains([' ', '\t']) {
            return bad(format!("header name {name:?}"));
        }
        headers.push((name.to_string(), value.trim().to_string()));
        if headers.len() > MAX_HEADERS {
            return bad("too many headers");
        }
    }
    let mut req = Request {
        method: method.into(),
        target: target.into(),
        version: version.into(),
        headers,
        body: Vec::new(),
    };
    if req
        .header("expect")
        .is_some_and(|e| e.eq_ignore_ascii_case("100-continue"))
    {
        out.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
    }
    let chunked = req.header("transfer-encoding").is_some_and(|te| {
        te.rsplit(',')
            .next()
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"))
    });
    if chunked {
        req.body = read_chunked(input)?;
    } else if let Some(len) = req.header("content-length") {
        let Ok(len) = len.trim().parse::<usize>() else {
            return bad(format!("Content-Length {len:?}"));
        };
        if len > MAX_BODY {
            return bad("body too large");
        }
        let mut body = vec![0; len];
        input.read_exact(&mut body)?;
        req.body = body;
    }
    Ok(Some(req))
}

fn read_chunked(input: &mut impl BufRead) -> Result<Vec<u8>, ReadError> {
    let mut body = Vec::new();
    loop {
        let Some(line) = read_line(input)? else {
            return Err(ReadError::Io);
        };
        let size = line.split(';').next().unwrap_or("").trim();
        let Ok(size) = usize::from_str_radix(size, 16) else {
            return bad(format!("chunk size {line:?}"));
        };
        if size == 0 {
            // Trailers, up to the empty line.
            while read_line(input)?.is_some_and(|l| !l.is_empty()) {}
            return Ok(body);
        }
        if body.len() + size > MAX_BODY {
            return bad("body too large");
        }
        let start = body.len();
        body.resize(start + size, 0);
        input.read_exact(&mut body[start..])?;
        if read_line(input)?.is_none_or(|l| !l.is_empty()) {
            return bad("chunk not followed by CRLF");
        }
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn json(status: u16, body: &Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: body.to_string().into_bytes(),
        }
    }

    fn with(mut self, name: &str, value: impl ToString) -> Response {
        self.headers.push((name.into(), value.to_string()));
        self
    }

    fn to_bytes(&self, keep_alive: bool) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            429 => "Too Many Requests",
            500 => "Internal Server Error",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            504 => "Gateway Timeout",
            _ => "Status",
        };
        let mut head = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            self.status,
            self.body.len()
        );
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        for (n, v) in &self.headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

// ---- routing and answers --------------------------------------------------------------------

struct Handled {
    response: Response,
    outcome: String,
    authenticated: bool,
    rejected: bool,
    wait_ms: u64,
}

impl Handled {
    fn plain(status: u16, body: Value, outcome: String) -> Handled {
        Handled {
            response: Response::json(status, &body),
            outcome,
            authenticated: false,
            rejected: false,
            wait_ms: 0,
        }
    }
}

static SERIAL: AtomicU64 = AtomicU64::new(1);

fn serial() -> u64 {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

fn handle(shared: &Shared, req: &Request) -> Handled {
    let path = req.path();
    if req.method == "POST" {
        if let Some(model) = path
            .strip_prefix("/model/")
            .and_then(|r| r.strip_suffix("/invoke"))
        {
            if !model.is_empty() && !model.contains('/') {
                return bedrock(shared, req, model);
            }
        }
        if path == "/v1/embeddings" || path == "/v1/chat/completions" {
            return openai(shared, req, path == "/v1/embeddings");
        }
    }
    Handled::plain(
        404,
        json!({"message": format!("no route for {} {path}", req.method)}),
        "404 not found".into(),
    )
}

fn aws_error(status: u16, kind: &str, suffix: &str, message: &str) -> Response {
    Response::json(status, &json!({ "message": message }))
        .with("x-amzn-ErrorType", format!("{kind}{suffix}"))
        .with("x-amzn-RequestId", request_id())
}

fn request_id() -> String {
    format!("00000000-0000-4000-8000-{:012x}", serial())
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks SigV4 (with the clock) or a bearer key; what authenticated the request.
fn authenticate_bedrock(config: &MockConfig, req: &Request) -> Result<&'static str, SigV4Error> {
    let auth = req.header("authorization").unwrap_or("");
    if let Some(key) = strip_prefix_ci(auth, "Bearer ") {
        return if config.bearer_keys.iter().any(|k| k == key.trim()) {
            Ok("bearer")
        } else {
            Err(SigV4Error::Unrecognized("unknown bearer key".into()))
        };
    }
    if !auth.starts_with("AWS4-HMAC-SHA256 ") {
        return Err(SigV4Error::Unrecognized(format!(
            "no SigV4 or bearer Authorization (got {:?})",
            auth.split(' ').next().unwrap_or("")
        )));
    }
    let key = SigV4Key {
        access_key_id: &config.access_key_id,
        secret_access_key: &config.secret_access_key,
        session_token: config.session_token.as_deref(),
        region: &config.region,
        service: SERVICE,
    };
    verify_sigv4(&req.method, &req.target, &req.headers, &req.body, &key)?;
    check_clock(req.header("x-amz-date").unwrap_or(""), now_s())?;
    Ok("sigv4")
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn bedrock(shared: &Shared, req: &Request, model: &str) -> Handled {
    let authenticated = match authenticate_bedrock(&shared.config, req) {
        Ok(_) => true,
        Err(e) => {
            let (kind, message) = match &e {
                SigV4Error::Unrecognized(_) => (
                    "UnrecognizedClientException",
                    "The security token included in the request is invalid.",
                ),
                SigV4Error::BadSignature(_) => (
                    "InvalidSignatureException",
                    "The request signature we calculated does not match the signature you provided.",
                ),
                SigV4Error::Expired(_) => (
                    "InvalidSignatureException",
                    "Signature expired: the request time is more than 15 minutes from the server time.",
                ),
            };
            return Handled {
                response: aws_error(403, kind, AWS_ERR_CORAL, message),
                outcome: format!("403 {kind}: {}", e.detail()),
                authenticated: false,
                rejected: true,
                wait_ms: 0,
            };
        }
    };
    let reply = shared.next_reply();
    let (delay, answer) = {
        let s = shared.state();
        (s.delay_ms, s.answer.clone())
    };
    let error = |status, kind: &str, message: &str, outcome: &str| Handled {
        response: aws_error(status, kind, AWS_ERR_BEDROCK, message),
        outcome: outcome.into(),
        authenticated,
        rejected: false,
        wait_ms: 0,
    };
    let (answer, stall, outcome) = match reply {
        Reply::Throttle { retry_after_s } => {
            let mut h = error(
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
                "429 throttled",
            );
            if let Some(s) = retry_after_s {
                h.response = h.response.with("Retry-After", s);
            }
            return h;
        }
        Reply::ModelNotReady => {
            return error(
                429,
                "ModelNotReadyException",
                "Model is not ready to serve inference requests. Try again later.",
                "429 model not ready",
            )
        }
        Reply::ServerError(503) => {
            return error(
                503,
                "ServiceUnavailableException",
                "Bedrock is unable to process your request.",
                "503 server error",
            )
        }
        Reply::ServerError(code) => {
            return error(
                code,
                "InternalServerException",
                "The server encountered an internal error while processing the request.",
                &format!("{code} server error"),
            )
        }
        Reply::Validation => {
            return error(
                400,
                "ValidationException",
                "Malformed input request, please reformat your input and try again.",
                "400 validation (scripted)",
            )
        }
        Reply::Malformed => {
            return Handled {
                response: Response {
                    status: 200,
                    headers: vec![("x-amzn-RequestId".into(), request_id())],
                    body: b"this is not json".to_vec(),
                },
                outcome: "200 malformed".into(),
                authenticated,
                rejected: false,
                wait_ms: delay,
            }
        }
        Reply::Normal => (answer, 0, "200 ok".to_string()),
        Reply::Stall { ms } => (answer, ms, format!("200 stalled {ms} ms")),
        Reply::Answer(text) => (text, 0, "200 answer (scripted)".to_string()),
    };
    let invalid = |message: String| {
        let outcome = format!("400 ValidationException: {message}");
        error(400, "ValidationException", &message, &outcome)
    };
    let Some(model) = percent_decode(model.as_bytes()).and_then(|m| String::from_utf8(m).ok())
    else {
        return invalid("The provided model identifier is invalid.".into());
    };
    match bedrock_answer(&model, &req.body, &answer) {
        Ok((body, tokens_in, tokens_out)) => {
            let mut response = Response::json(200, &body)
                .with("x-amzn-RequestId", request_id())
                .with("X-Amzn-Bedrock-Input-Token-Count", tokens_in)
                .with("X-Amzn-Bedrock-Invocation-Latency", delay);
            if let Some(out) = tokens_out {
                response = response.with("X-Amzn-Bedrock-Output-Token-Count", out);
            }
            Handled {
                response,
                outcome,
                authenticated,
                rejected: false,
                wait_ms: delay + stall,
            }
        }
        Err(message) => invalid(message),
    }
}

/// Roughly the tokens of a text: its words, at least 1.
fn tokens(text: &str) -> u64 {
    (text.split_whitespace().count() as u64).max(1)
}

/// A deterministic, L2-normalised vector for `text`: xorshift64 seeded with FNV-1a of the text.
pub fn embedding(text: &str, dims: usize) -> Vec<f32> {
    let mut seed: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        seed ^= u64::from(b);
        seed = seed.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut s = seed | 1; // xorshift never leaves 0
    let raw: Vec<f64> = (0..dims)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    raw.iter().map(|x| (x / norm) as f32).collect()
}

fn malformed(why: impl std::fmt::Display) -> String {
    format!("Malformed input request: {why}, please reformat your input and try again.")
}

fn only_keys(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(malformed(format!(
            "#: extraneous key [{k}] is not permitted"
        ))),
        None => Ok(()),
    }
}

fn input_text(obj: &Map<String, Value>) -> Result<&str, String> {
    match obj.get("inputText") {
        None => Err(malformed("#: required key [inputText] not found")),
        Some(Value::String(s)) if s.is_empty() => {
            Err(malformed("#/inputText: expected minLength: 1, actual: 0"))
        }
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(malformed("#/inputText: expected type: String")),
    }
}

fn is_anthropic(model: &str) -> bool {
    model.starts_with("anthropic.") || model.contains(".anthropic.")
}

/// `anthropic.claude-3-haiku-20240307-v1:0` -> `claude-3-haiku-20240307`, as Bedrock reports it.
fn claude_name(model: &str) -> String {
    let name = model.split_once("anthropic.").map_or(model, |(_, n)| n);
    if let Some((base, version)) = name.rsplit_once("-v") {
        let mut parts = version.splitn(2, ':');
        let digits = |p: Option<&str>| p.is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
        if digits(parts.next()) && digits(parts.next()) {
            return base.into();
        }
    }
    name.into()
}

/// The text of a message `content` (a string, or blocks with `text`).
fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// A Bedrock InvokeModel answer: the body, input tokens, output tokens (text models).
fn bedrock_answer(
    model: &str,
    body: &[u8],
    answer: &str,
) -> Result<(Value, u64, Option<u64>), String> {
    let known = matches!(
        model,
        "amazon.titan-embed-text-v1" | "amazon.titan-embed-text-v2:0"
    ) || is_anthropic(model);
    if !known {
        return Err("The provided model identifier is invalid.".into());
    }
    let parsed: Value = serde_json::from_slice(body).map_err(malformed)?;
    let Some(obj) = parsed.as_object() else {
        return Err(malformed("#: expected type: JSONObject"));
    };
    if model == "amazon.titan-embed-text-v1" {
        only_keys(obj, &["inputText"])?;
        let text = input_text(obj)?;
        let n = tokens(text);
        let v = embedding(text, 1536);
        return Ok((json!({"embedding": v, "inputTextTokenCount": n}), n, None));
    }
    if model == "amazon.titan-embed-text-v2:0" {
        only_keys(
            obj,
            &["inputText", "dimensions", "normalize", "embeddingTypes"],
        )?;
        let text = input_text(obj)?;
        let dims = match obj.get("dimensions") {
            None => 1024,
            Some(d) => match d.as_u64() {
                Some(n @ (256 | 512 | 1024)) => n as usize,
                _ => {
                    return Err(malformed(format!(
                        "#/dimensions: {d} is not a valid enum value"
                    )))
                }
            },
        };
        if obj.get("normalize").is_some_and(|n| !n.is_boolean()) {
            return Err(malformed("#/normalize: expected type: Boolean"));
        }
        if let Some(types) = obj.get("embeddingTypes") {
            // Binary embeddings are not mocked; a caller asking for them should notice.
            let floats_only = types
                .as_array()
                .is_some_and(|t| !t.is_empty() && t.iter().all(|x| x == "float"));
            if !floats_only {
                return Err(malformed(
                    "#/embeddingTypes: only [\"float\"] is supported by the mock",
                ));
            }
        }
        let n = tokens(text);
        let v = embedding(text, dims);
        return Ok((
            json!({"embedding": v, "embeddingsByType": {"float": v}, "inputTextTokenCount": n}),
            n,
            None,
        ));
    }
    // Anthropic Messages API on Bedrock.
    if obj.get("anthropic_version").and_then(Value::as_str) != Some("bedrock-2023-05-31") {
        return Err(malformed(
            "#/anthropic_version: required, must be \"bedrock-2023-05-31\"",
        ));
    }
    if obj
        .get("max_tokens")
        .and_then(Value::as_u64)
        .is_none_or(|n| n == 0)
    {
        return Err(malformed("#/max_tokens: required positive integer"));
    }
    let Some(messages) = obj
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return Err(malformed("#/messages: required non-empty array"));
    };
    let mut prompt = obj.get("system").map(content_text).unwrap_or_default();
    for m in messages {
        let role = m.get("role").and_then(Value::as_str);
        if !matches!(role, Some("user" | "assistant")) || m.get("content").is_none() {
            return Err(malformed(
                "#/messages: each needs role user|assistant and content",
            ));
        }
        prompt.push(' ');
        prompt.push_str(&content_text(&m["content"]));
    }
    let (n, m) = (tokens(&prompt), tokens(answer));
    let body = json!({
        "id": format!("msg_bdrk_01{:022x}", serial()),
        "type": "message",
        "role": "assistant",
        "model": claude_name(model),
        "content": [{"type": "text", "text": answer}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": n, "output_tokens": m},
    });
    Ok((body, n, Some(m)))
}

fn openai_error(status: u16, message: &str, kind: &str) -> Response {
    Response::json(
        status,
        &json!({"error": {"message": message, "type": kind}}),
    )
}

fn openai(shared: &Shared, req: &Request, embeddings: bool) -> Handled {
    let auth = req.header("authorization").unwrap_or("");
    let key = strip_prefix_ci(auth, "Bearer ").map(str::trim);
    if !key.is_some_and(|k| shared.config.bearer_keys.iter().any(|b| b == k)) {
        return Handled {
            response: Response::json(
                401,
                &json!({"error": {"message": "Incorrect API key provided",
                    "type": "invalid_request_error", "code": "invalid_api_key"}}),
            ),
            outcome: "401 invalid_api_key".into(),
            authenticated: false,
            rejected: true,
            wait_ms: 0,
        };
    }
    let reply = shared.next_reply();
    let (delay, answer) = {
        let s = shared.state();
        (s.delay_ms, s.answer.clone())
    };
    let error = |response: Response, outcome: &str| Handled {
        response,
        outcome: outcome.into(),
        authenticated: true,
        rejected: false,
        wait_ms: 0,
    };
    let (answer, stall, outcome) = match reply {
        Reply::Throttle { retry_after_s } => {
            let mut r = openai_error(429, "Rate limit reached", "rate_limit_exceeded");
            if let Some(s) = retry_after_s {
                r = r.with("Retry-After", s);
            }
            return error(r, "429 throttled");
        }
        Reply::ModelNotReady => {
            return error(
                openai_error(
                    503,
                    "The engine is currently overloaded, please try again later",
                    "server_error",
                ),
                "503 model not ready",
            )
        }
        Reply::ServerError(code) => {
            return error(
                openai_error(
                    code,
                    "The server had an error while processing your request.",
                    "server_error",
                ),
                &format!("{code} server error"),
            )
        }
        Reply::Validation => {
            return error(
                openai_error(400, "Invalid request", "invalid_request_error"),
                "400 validation (scripted)",
            )
        }
        Reply::Malformed => {
            return Handled {
                response: Response {
                    status: 200,
                    headers: Vec::new(),
                    body: b"this is not json".to_vec(),
                },
                outcome: "200 malformed".into(),
                authenticated: true,
                rejected: false,
                wait_ms: delay,
            }
        }
        Reply::Normal => (answer, 0, "200 ok".to_string()),
        Reply::Stall { ms } => (answer, ms, format!("200 stalled {ms} ms")),
        Reply::Answer(text) => (text, 0, "200 answer (scripted)".to_string()),
    };
    let result = if embeddings {
        openai_embeddings(&req.body)
    } else {
        openai_chat(&req.body, &answer)
    };
    match result {
        Ok(body) => Handled {
            response: Response::json(200, &body),
            outcome,
            authenticated: true,
            rejected: false,
            wait_ms: delay + stall,
        },
        Err(message) => error(
            openai_error(400, &message, "invalid_request_error"),
            &format!("400 invalid_request_error: {message}"),
        ),
    }
}

fn openai_embeddings(body: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let Some(model) = v.get("model").and_then(Value::as_str) else {
        return Err("you must provide a model parameter".into());
    };
    let inputs: Vec<&str> = match v.get("input") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or("'$.input' must be a string or an array of strings")?,
        _ => return Err("'$.input' is invalid".into()),
    };
    if inputs.iter().any(|s| s.is_empty()) {
        return Err("'$.input' is invalid: empty string".into());
    }
    if v.get("encoding_format")
        .is_some_and(|f| f != "float" && !f.is_null())
    {
        return Err("the mock only serves encoding_format \"float\"".into());
    }
    let dims = match v.get("dimensions") {
        None | Some(Value::Null) => {
            if model.contains("3-small") || model.contains("ada") {
                1536
            } else if model.contains("3-large") {
                3072
            } else {
                768
            }
        }
        Some(d) => match d.as_u64() {
            Some(n @ 1..=8192) => n as usize,
            _ => return Err(format!("invalid dimensions {d}")),
        },
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": embedding(s, dims)}))
        .collect();
    let n: u64 = inputs.iter().map(|s| tokens(s)).sum();
    Ok(json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": n, "total_tokens": n},
    }))
}

fn openai_chat(body: &[u8], answer: &str) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let Some(model) = v.get("model").and_then(Value::as_str) else {
        return Err("you must provide a model parameter".into());
    };
    let Some(messages) = v
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
    else {
        return Err("'messages' must be a non-empty array".into());
    };
    let prompt: Vec<String> = messages
        .iter()
        .map(|m| m.get("content").map(content_text).unwrap_or_default())
        .collect();
    let (n, m) = (tokens(&prompt.join(" ")), tokens(answer));
    Ok(json!({
        "id": format!("chatcmpl-mock{:016x}", serial()),
        "object": "chat.completion",
        "created": now_s(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": answer},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m},
    }))
}

// ---- SigV4, from the spec -------------------------------------------------------------------

/// The credentials and scope a SigV4 request must be signed for.
#[derive(Clone, Copy, Debug)]
pub struct SigV4Key<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    /// When set, `x-amz-security-token` must equal it and be signed.
    pub session_token: Option<&'a str>,
    pub region: &'a str,
    pub service: &'a str,
}

/// Why a SigV4 request was refused; the detail says exactly what did not match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SigV4Error {
    /// Unknown key id, missing or wrong session token, not SigV4 at all.
    Unrecognized(String),
    /// The signature, scope or signed headers are wrong.
    BadSignature(String),
    /// X-Amz-Date more than 15 minutes from the clock.
    Expired(String),
}

impl SigV4Error {
    pub fn detail(&self) -> &str {
        match self {
            SigV4Error::Unrecognized(d) | SigV4Error::BadSignature(d) | SigV4Error::Expired(d) => d,
        }
    }
}

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~')
}

/// URI-encodes every byte but the unreserved ones, with upper-case hex (SigV4's UriEncode).
pub fn uri_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if unreserved(b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// Decodes `%XX`; `None` on a malformed escape.
pub fn percent_decode(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// The canonical URI for services other than S3: the path as sent, each segment encoded once
/// more, so `%3A` on the wire becomes `%253A`.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|seg| uri_encode(seg.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

/// The canonical query: each name and value decoded then URI-encoded, sorted by name then value.
pub fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let enc = |s: &str| {
                let raw = percent_decode(s.as_bytes()).unwrap_or_else(|| s.as_bytes().to_vec());
                uri_encode(&raw)
            };
            (enc(k), enc(v))
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The canonical request for a request target (path?query), its headers, the header names
/// signed (lower-case, sorted) and the payload hash.
pub fn canonical_request(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    signed: &[&str],
    payload_hash: &str,
) -> String {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut canonical_headers = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    format!(
        "{method}\n{}\n{}\n{canonical_headers}\n{}\n{payload_hash}",
        canonical_uri(path),
        canonical_query(query),
        signed.join(";")
    )
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// HMAC chain of "AWS4"+secret over date, region, service, "aws4_request".
pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    hmac(&k, b"aws4_request")
}

/// The hex signature of a string to sign.
pub fn signature(signing_key: &[u8], string_to_sign: &str) -> String {
    hex::encode(hmac(signing_key, string_to_sign.as_bytes()))
}

/// Verifies a SigV4-signed request (`Authorization: AWS4-HMAC-SHA256 ...`) for `key`. The clock is
/// checked separately ([`check_clock`]) so AWS's fixed-date test vectors can be verified.
pub fn verify_sigv4(
    method: &str,
    target: &str,
    headers: &[(String, String)],
    body: &[u8],
    key: &SigV4Key,
) -> Result<(), SigV4Error> {
    use SigV4Error::{BadSignature, Unrecognized};
    let auth = header(headers, "authorization").unwrap_or("");
    let Some(params) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return Err(Unrecognized("Authorization is not AWS4-HMAC-SHA256".into()));
    };
    let (mut credential, mut signed, mut given) = (None, None, None);
    for part in params.split(',') {
        match part.trim().split_once('=') {
            Some(("Credential", v)) => credential = Some(v),
            Some(("SignedHeaders", v)) => signed = Some(v),
            Some(("Signature", v)) => given = Some(v),
            _ => return Err(Unrecognized(format!("Authorization part {part:?}"))),
        }
    }
    let (Some(credential), Some(signed), Some(given)) = (credential, signed, given) else {
        return Err(Unrecognized(
            "Authorization lacks Credential, SignedHeaders or Signature".into(),
        ));
    };
    let scope_parts: Vec<&str> = credential.split('/').collect();
    let [akid, date, region, service, terminal] = scope_parts[..] else {
        return Err(Unrecognized(format!("Credential {credential:?}")));
    };
    if akid != key.access_key_id {
        return Err(Unrecognized(format!("unknown access key id {akid:?}")));
    }
    if region != key.region || service != key.service || terminal != "aws4_request" {
        return Err(BadSignature(format!(
            "credential scope {date}/{region}/{service}/{terminal}, expected region {} and service {}",
            key.region, key.service
        )));
    }
    let signed: Vec<&str> = signed.split(';').collect();
    let sorted = signed.windows(2).all(|w| w[0] < w[1]);
    if !sorted
        || signed
            .iter()
            .any(|h| h.is_empty() || h.to_ascii_lowercase() != *h)
    {
        return Err(BadSignature(format!(
            "SignedHeaders {:?} must be lower-case and sorted",
            signed.join(";")
        )));
    }
    for required in ["host", "x-amz-date"] {
        if !signed.contains(&required) {
            return Err(BadSignature(format!("{required} is not signed")));
        }
    }
    if let Some(missing) = signed.iter().find(|h| header(headers, h).is_none()) {
        return Err(BadSignature(format!("signed header {missing} is absent")));
    }
    let amz_date = header(headers, "x-amz-date").unwrap_or("");
    if amz_date.get(..8) != Some(date) {
        return Err(BadSignature(format!(
            "X-Amz-Date {amz_date:?} is not of the credential's date {date}"
        )));
    }
    match (key.session_token, header(headers, "x-amz-security-token")) {
        (None, None) => {}
        (None, Some(_)) => return Err(Unrecognized("unexpected session token".into())),
        (Some(_), None) => return Err(Unrecognized("missing session token".into())),
        (Some(want), Some(got)) if want != got => {
            return Err(Unrecognized("wrong session token".into()))
        }
        (Some(_), Some(_)) => {
            if !signed.contains(&"x-amz-security-token") {
                return Err(BadSignature("x-amz-security-token is not signed".into()));
            }
        }
    }
    let body_hash = sha256_hex(body);
    let payload_hash = match header(headers, "x-amz-content-sha256") {
        Some(h) if h != body_hash => {
            return Err(BadSignature(format!(
                "x-amz-content-sha256 {h} is not the body's hash {body_hash}"
            )))
        }
        _ => body_hash,
    };
    let canonical = canonical_request(method, target, headers, &signed, &payload_hash);
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign = string_to_sign(amz_date, &scope, &canonical);
    let k = signing_key(key.secret_access_key, date, region, service);
    let mut mac = HmacSha256::new_from_slice(&k).expect("HMAC takes keys of any length");
    mac.update(to_sign.as_bytes());
    let given_bytes = hex::decode(given).unwrap_or_default();
    // verify_slice compares in constant time.
    mac.verify_slice(&given_bytes).map_err(|_| {
        BadSignature(format!(
            "signature mismatch; canonical request:\n{canonical}\nstring to sign:\n{to_sign}"
        ))
    })
}

/// Refuses an X-Amz-Date more than 15 minutes from `now` (Unix seconds).
pub fn check_clock(amz_date: &str, now: u64) -> Result<(), SigV4Error> {
    let Some(t) = parse_amz_date(amz_date) else {
        return Err(SigV4Error::BadSignature(format!(
            "X-Amz-Date {amz_date:?} is not YYYYMMDDTHHMMSSZ"
        )));
    };
    if t.abs_diff(now) > MAX_SKEW_S {
        return Err(SigV4Error::Expired(format!(
            "X-Amz-Date {amz_date} is {} s from the clock",
            t as i64 - now as i64
        )));
    }
    Ok(())
}

// Days since 1970-01-01 of a civil date, and back (Howard Hinnant's algorithms).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `YYYYMMDDTHHMMSSZ` to Unix seconds.
pub fn parse_amz_date(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (h, mi, se) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    u64::try_from(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + se).ok()
}

/// Unix seconds as `YYYYMMDDTHHMMSSZ`.
pub fn amz_date(unix_s: u64) -> String {
    let secs = unix_s as i64;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// Test helper: signs a request the way an SDK would, signing every header present plus
/// `x-amz-date` (and the session token), and appends `X-Amz-Date`, `X-Amz-Security-Token` and
/// `Authorization`. It shares the canonicalisation with the verifier, so it only proves
/// round trips; the AWS vectors below are what check the canonicalisation itself.
pub fn sign_sigv4(
    method: &str,
    target: &str,
    headers: &mut Vec<(String, String)>,
    body: &[u8],
    key: &SigV4Key,
    amz_date: &str,
) {
    headers.push(("X-Amz-Date".into(), amz_date.into()));
    if let Some(token) = key.session_token {
        headers.push(("X-Amz-Security-Token".into(), token.into()));
    }
    let mut names: Vec<String> = headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort();
    names.dedup();
    let signed: Vec<&str> = names.iter().map(String::as_str).collect();
    let date = &amz_date[..8];
    let scope = format!("{date}/{}/{}/aws4_request", key.region, key.service);
    let canonical = canonical_request(method, target, headers, &signed, &sha256_hex(body));
    let sig = signature(
        &signing_key(key.secret_access_key, date, key.region, key.service),
        &string_to_sign(amz_date, &scope, &canonical),
    );
    headers.push((
        "Authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
            key.access_key_id,
            signed.join(";")
        ),
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: SigV4Key = SigV4Key {
        access_key_id: "AKIDEXAMPLE",
        secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        session_token: None,
        region: "us-east-1",
        service: "service",
    };
    const SUITE_AUTH: &str = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=";

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// A request of AWS's SigV4 test suite (host example.amazonaws.com, 20150830T123600Z).
    fn suite(signature: &str) -> Vec<(String, String)> {
        h(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", &format!("{SUITE_AUTH}{signature}")),
        ])
    }

    #[test]
    fn verifies_aws_test_suite_vectors() {
        // get-vanilla
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        assert_eq!(verify_sigv4("GET", "/", &suite(sig), b"", &EXAMPLE), Ok(()));
        // get-vanilla-query-order-key-case: the query is sorted before signing.
        let sig = "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500";
        let target = "/?Param2=value2&Param1=value1";
        assert_eq!(
            verify_sigv4("GET", target, &suite(sig), b"", &EXAMPLE),
            Ok(())
        );
        // post-vanilla
        let sig = "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b";
        assert_eq!(
            verify_sigv4("POST", "/", &suite(sig), b"", &EXAMPLE),
            Ok(())
        );
        // get-utf8: a raw UTF-8 path is encoded as %E1%88%B4.
        let sig = "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85";
        assert_eq!(
            verify_sigv4("GET", "/\u{1234}", &suite(sig), b"", &EXAMPLE),
            Ok(())
        );
    }

    #[test]
    fn derives_the_published_signing_key_and_signature() {
        let k = signing_key(
            EXAMPLE.secret_access_key,
            "20150830",
            "us-east-1",
            "service",
        );
        let canonical = canonical_request(
            "GET",
            "/",
            &suite(""),
            &["host", "x-amz-date"],
            &sha256_hex(b""),
        );
        assert_eq!(
            canonical,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n\
             e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let sts = string_to_sign(
            "20150830T123600Z",
            "20150830/us-east-1/service/aws4_request",
            &canonical,
        );
        assert!(sts.ends_with("bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"));
        assert_eq!(
            signature(&k, &sts),
            "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
        );
    }

    #[test]
    fn rejects_what_does_not_match() {
        let sig = "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let wrong_secret = SigV4Key {
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEz",
            ..EXAMPLE
        };
        let bad = |r| matches!(r, Err(SigV4Error::BadSignature(_)));
        assert!(bad(verify_sigv4(
            "GET",
            "/",
            &suite(sig),
            b"",
            &wrong_secret
        )));
        assert!(bad(verify_sigv4("GET", "/", &suite(sig), b"x", &EXAMPLE)));
        assert!(bad(verify_sigv4("GET", "/x", &suite(sig), b"", &EXAMPLE)));
        assert!(bad(verify_sigv4("PUT", "/", &suite(sig), b"", &EXAMPLE)));
        let bedrock = SigV4Key {
            service: "bedrock",
            ..EXAMPLE
        };
        assert!(bad(verify_sigv4("GET", "/", &suite(sig), b"", &bedrock)));
        let other_id = SigV4Key {
            access_key_id: "AKIDOTHER",
            ..EXAMPLE
        };
        assert!(matches!(
            verify_sigv4("GET", "/", &suite(sig), b"", &other_id),
            Err(SigV4Error::Unrecognized(_))
        ));
        let with_token = SigV4Key {
            session_token: Some("token"),
            ..EXAMPLE
        };
        assert!(matches!(
            verify_sigv4("GET", "/", &suite(sig), b"", &with_token),
            Err(SigV4Error::Unrecognized(_))
        ));
        // host must be signed.
        let mut unsigned_host = suite(sig);
        unsigned_host[2].1 = unsigned_host[2]
            .1
            .replace("SignedHeaders=host;x-amz-date", "SignedHeaders=x-amz-date");
        assert!(bad(verify_sigv4("GET", "/", &unsigned_host, b"", &EXAMPLE)));
    }

    #[test]
    fn signs_and_verifies_session_tokens_and_payload_hashes() {
        let key = SigV4Key {
            session_token: Some("the-token"),
            service: SERVICE,
            ..EXAMPLE
        };
        let target = "/model/amazon.titan-embed-text-v2%3A0/invoke";
        let body = br#"{"inputText":"x"}"#;
        let mut headers = h(&[
            ("Host", "127.0.0.1:1"),
            ("x-amz-content-sha256", &sha256_hex(body)),
        ]);
        sign_sigv4("POST", target, &mut headers, body, &key, "20240102T030405Z");
        assert_eq!(verify_sigv4("POST", target, &headers, body, &key), Ok(()));
        let wrong_token = SigV4Key {
            session_token: Some("other"),
            ..key
        };
        assert!(matches!(
            verify_sigv4("POST", target, &headers, body, &wrong_token),
            Err(SigV4Error::Unrecognized(_))
        ));
        assert!(matches!(
            verify_sigv4("POST", target, &headers, b"{}", &key),
            Err(SigV4Error::BadSignature(_))
        ));
    }

    #[test]
    fn canonical_uri_encodes_the_path_again() {
        assert_eq!(
            canonical_uri("/model/amazon.titan-embed-text-v2%3A0/invoke"),
            "/model/amazon.titan-embed-text-v2%253A0/invoke"
        );
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_query("b=2&a=%3a&a=1"), "a=%3A&a=1&b=2");
    }

    #[test]
    fn dates_round_trip_and_the_clock_is_checked() {
        assert_eq!(amz_date(1_440_938_160), "20150830T123600Z");
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("20000229T000000Z"), Some(951_782_400));
        assert_eq!(parse_amz_date("2015-08-30T12:36"), None);
        assert_eq!(check_clock("20150830T123600Z", 1_440_938_160 + 900), Ok(()));
        assert!(matches!(
            check_clock("20150830T123600Z", 1_440_938_160 + 901),
            Err(SigV4Error::Expired(_))
        ));
    }

    #[test]
    fn embeddings_are_deterministic_and_normalised() {
        let a = embedding("hello world", 1024);
        assert_eq!(a, embedding("hello world", 1024));
        assert_ne!(a, embedding("hello worle", 1024));
        let norm: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
        assert_eq!(
            claude_name("anthropic.claude-3-haiku-20240307-v1:0"),
            "claude-3-haiku-20240307"
        );
        assert_eq!(
            claude_name("us.anthropic.claude-3-5-sonnet-20241022-v2:0"),
            "claude-3-5-sonnet-20241022"
        );
    }

    // ---- end to end, over TCP ----

    struct Answer {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Answer {
        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("JSON answer")
        }
    }

    /// Sends one raw request on `conn` and reads the answer (Content-Length framed).
    fn exchange(conn: &mut TcpStream, head: &str, body: &[u8]) -> Answer {
        conn.write_all(head.as_bytes()).unwrap();
        conn.write_all(body).unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let status = line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (n, v) = l.split_once(':').unwrap();
            headers.push((n.to_string(), v.trim().to_string()));
        }
        let len: usize = header(&headers, "content-length").unwrap().parse().unwrap();
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        // The reader's buffer is dropped: fine, the mock never sends more than one answer.
        Answer {
            status,
            headers,
            body,
        }
    }

    fn signed_post(mock: &MockBedrock, target: &str, body: &[u8], secret: &str) -> String {
        let c = mock.config();
        let key = SigV4Key {
            access_key_id: &c.access_key_id,
            secret_access_key: secret,
            session_token: c.session_token.as_deref(),
            region: &c.region,
            service: SERVICE,
        };
        let mut headers = h(&[
            ("Host", &format!("127.0.0.1:{}", mock.port())),
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ]);
        sign_sigv4("POST", target, &mut headers, body, &key, &amz_date(now_s()));
        let mut head = format!("POST {target} HTTP/1.1\r\n");
        for (n, v) in &headers {
            head.push_str(&format!("{n}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        head
    }

    #[test]
    fn serves_signed_bedrock_requests_and_rejects_bad_signatures() {
        let mock = MockBedrock::start(MockConfig::default());
        let mut conn = TcpStream::connect(("127.0.0.1", mock.port())).unwrap();
        let target = "/model/amazon.titan-embed-text-v2%3A0/invoke";
        let body = br#"{"inputText": "three little words", "dimensions": 256, "normalize": true}"#;

        let head = signed_post(&mock, target, body, TEST_SECRET_ACCESS_KEY);
        let a = exchange(&mut conn, &head, body);
        assert_eq!(a.status, 200, "{}", String::from_utf8_lossy(&a.body));
        let v = a.json();
        assert_eq!(v["embedding"].as_array().unwrap().len(), 256);
        assert_eq!(v["embeddingsByType"]["float"], v["embedding"]);
        assert_eq!(v["inputTextTokenCount"], 3);

        // Same connection (keep-alive), wrong secret.
        let head = signed_post(&mock, target, body, "not-the-secret");
        let a = exchange(&mut conn, &head, body);
        assert_eq!(a.status, 403);
        assert!(header(&a.headers, "x-amzn-ErrorType")
            .unwrap()
            .starts_with("InvalidSignatureException"));
        assert_eq!(
            a.json()["message"],
            "The request signature we calculated does not match the signature you provided."
        );

        // Claude with a bearer key; the answer text is configurable.
        mock.set_answer("{\"summary\": \"mocked\"}");
        let body = br#"{"anthropic_version": "bedrock-2023-05-31", "max_tokens": 50, "messages": [{"role": "user", "content": "say hi"}]}"#;
        let head = format!(
            "POST /model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {TEST_BEARER_KEY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let v = exchange(&mut conn, &head, body).json();
        assert_eq!(v["model"], "claude-3-haiku-20240307");
        assert_eq!(v["content"][0]["text"], "{\"summary\": \"mocked\"}");
        assert_eq!(v["usage"]["input_tokens"], 2);

        let seen = mock.requests();
        assert_eq!(seen.len(), 3);
        assert!(seen[0].signature_ok && seen[0].outcome == "200 ok");
        assert!(!seen[1].signature_ok && seen[1].outcome.starts_with("403 InvalidSignature"));
        assert!(seen[2].signature_ok);
        assert_eq!(mock.rejected(), 1);
    }

    #[test]
    fn scripts_errors_and_stalls_without_blocking_others() {
        let mock = MockBedrock::start(MockConfig::default());
        mock.script(vec![
            Reply::Throttle {
                retry_after_s: Some(2),
            },
            Reply::Stall { ms: 3000 },
        ]);
        let body = br#"{"model": "text-embedding-3-small", "input": ["a b", "c"]}"#;
        // Chunked, to check that framing too.
        let chunked = {
            let mut c = format!("{:x}\r\n", body.len()).into_bytes();
            c.extend_from_slice(body);
            c.extend_from_slice(b"\r\n0\r\n\r\n");
            c
        };
        let head = format!(
            "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_BEARER_KEY}\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
        let mut a = TcpStream::connect(("127.0.0.1", mock.port())).unwrap();
        let r = exchange(&mut a, &head, &chunked);
        assert_eq!(r.status, 429);
        assert_eq!(header(&r.headers, "retry-after"), Some("2"));
        assert_eq!(r.json()["error"]["type"], "rate_limit_exceeded");

        // The stall holds this connection only.
        a.write_all(head.as_bytes()).unwrap();
        a.write_all(&chunked).unwrap();
        while mock.requests().len() < 2 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let started = std::time::Instant::now();
        let mut b = TcpStream::connect(("127.0.0.1", mock.port())).unwrap();
        let r = exchange(&mut b, &head, &chunked);
        assert!(started.elapsed() < Duration::from_millis(2000));
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 1536);
        assert_eq!(v["usage"]["prompt_tokens"], 3);

        let wrong =
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\
                     Connection: close\r\nContent-Length: 2\r\n\r\n";
        let r = exchange(&mut b, wrong, b"{}");
        assert_eq!(r.status, 401);
        assert_eq!(r.json()["error"]["code"], "invalid_api_key");
        assert_eq!(mock.rejected(), 1);
        let outcomes: Vec<String> = mock.requests().into_iter().map(|c| c.outcome).collect();
        assert_eq!(
            outcomes,
            [
                "429 throttled",
                "200 stalled 3000 ms",
                "200 ok",
                "401 invalid_api_key"
            ]
        );
    }

    #[test]
    fn refuses_unknown_models_and_bad_bodies() {
        let mock = MockBedrock::start(MockConfig::default());
        let mut conn = TcpStream::connect(("127.0.0.1", mock.port())).unwrap();
        let post = |conn: &mut TcpStream, model: &str, body: &[u8]| {
            let head = format!(
                "POST /model/{model}/invoke HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_BEARER_KEY}\r\n\
                 Content-Length: {}\r\n\r\n",
                body.len()
            );
            exchange(conn, &head, body)
        };
        let r = post(&mut conn, "amazon.nope", br#"{"inputText": "x"}"#);
        assert_eq!(r.status, 400);
        assert_eq!(
            r.json()["message"],
            "The provided model identifier is invalid."
        );
        let r = post(
            &mut conn,
            "amazon.titan-embed-text-v2%3A0",
            br#"{"inputText": "x", "dimensions": 100}"#,
        );
        assert_eq!(r.status, 400);
        let r = post(
            &mut conn,
            "amazon.titan-embed-text-v1",
            br#"{"inputText": ""}"#,
        );
        assert_eq!(r.status, 400);
        let r = post(
            &mut conn,
            "amazon.titan-embed-text-v1",
            br#"{"inputText": "x y"}"#,
        );
        assert_eq!(r.json()["embedding"].as_array().unwrap().len(), 1536);
        let r = post(
            &mut conn,
            "anthropic.claude-3-haiku-20240307-v1%3A0",
            br#"{"max_tokens": 5, "messages": []}"#,
        );
        assert_eq!(r.status, 400);
        let r = exchange(&mut conn, "GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", b"");
        assert_eq!(r.status, 404);
        // Without credentials: 403 UnrecognizedClientException.
        let r = exchange(
            &mut conn,
            "POST /model/amazon.titan-embed-text-v1/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            b"",
        );
        assert_eq!(r.status, 403);
        assert!(header(&r.headers, "x-amzn-ErrorType")
            .unwrap()
            .starts_with("UnrecognizedClientException"));
        // Garbage gets a 400 and the connection closed; the server lives on.
        let r = exchange(&mut conn, "NONSENSE\r\n\r\n", b"");
        assert_eq!(r.status, 400);
        let mut again = TcpStream::connect(("127.0.0.1", mock.port())).unwrap();
        let r = exchange(&mut again, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"");
        assert_eq!(r.status, 404);
    }
}
