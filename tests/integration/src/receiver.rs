//! A webhook receiver on 127.0.0.1 for the notification tests: it records every request
//! (headers and body) and answers each with the next scripted status (200 once the script is
//! spent).

use crate::mock_bedrock::{json_answer, read_one_request};
use serde_json::json;
use std::collections::VecDeque;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    script: VecDeque<u16>,
    always: Option<u16>,
}

pub struct Receiver {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

fn lock(s: &Mutex<State>) -> MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("receiver: bind");
        let addr = listener.local_addr().expect("receiver: address");
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stopping) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = conn else { continue };
                let Some(request) = read_one_request(&stream) else {
                    continue;
                };
                let status = {
                    let mut s = lock(&st);
                    let status = s.script.pop_front().or(s.always).unwrap_or(200);
                    s.received.push(Received {
                        path: request.target,
                        headers: request.headers,
                        body: request.body,
                        status,
                    });
                    status
                };
                let _ = stream.write_all(&json_answer(status, &json!({"ok": status < 300})));
            }
        });
        Receiver { state, stop, addr }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    /// The next requests are answered with these statuses, in order.
    pub fn script(&self, statuses: &[u16]) {
        lock(&self.state).script.extend(statuses);
    }

    /// Every request from now on is answered with `status` (None: 200).
    pub fn always(&self, status: Option<u16>) {
        lock(&self.state).always = status;
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}
