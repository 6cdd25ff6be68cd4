//! A stand-in for the ECS instance metadata service, as far as spot termination goes:
//! `GET /latest/meta-data/instance/spot/termination-time` (404 until a notice is set, then 200
//! with the time) and `PUT /latest/api/token` (session tokens that expire, for hardened mode).
//!
//! Tests and the drain benchmark steer it: set or clear the notice, require tokens with a
//! lifetime cap, revoke them, and break it on purpose (garbage with 200, a hang, HTTP 500, or
//! down: nothing listening on the port, then listening again on the same port). It counts the
//! requests it got so a test can assert on them.
//!
//! Plain threads and blocking sockets, so it works the same from any test runtime.

use anyhow::{Context as _, bail};
use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{Shutdown, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

pub const TERMINATION_TIME_PATH: &str = "/latest/meta-data/instance/spot/termination-time";
pub const TOKEN_PATH: &str = "/latest/api/token";
pub const TOKEN_TTL_HEADER: &str = "x-aliyun-ecs-metadata-token-ttl-seconds";
pub const TOKEN_HEADER: &str = "x-aliyun-ecs-metadata-token";

/// How the service treats session tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tokens {
    /// `PUT /latest/api/token` is 404; tokens on GETs are ignored.
    Unsupported,
    /// Tokens are handed out; a GET may carry a valid one or none (ECS normal mode).
    Accepted,
    /// Hardened mode: a GET without a valid token is 401.
    Required,
}

/// A way of being broken. Faults apply to every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// 200 with an HTML body.
    Garbage,
    /// Reads the request and never answers (until the fault is cleared).
    Hang,
    /// 500.
    ServerError,
}

/// What the service has been asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Termination-time GETs, all of them.
    pub gets: u64,
    /// GETs that carried a token the service had issued and that had not expired.
    pub gets_valid_token: u64,
    /// GETs without any token.
    pub gets_without_token: u64,
    /// GETs refused with 401 (missing, unknown or expired token).
    pub gets_rejected: u64,
    /// Token PUTs that were answered with a token.
    pub tokens_issued: u64,
    /// GETs answered with the notice.
    pub notices_served: u64,
    /// Requests answered (or not) with a fault.
    pub faults: u64,
}

struct State {
    notice: Option<String>,
    tokens: Tokens,
    max_ttl: Option<Duration>,
    issued: HashMap<String, Instant>,
    next_token: u64,
    fault: Fault,
    counts: Counts,
}

struct Shared {
    state: Mutex<State>,
    /// Set when the server is dropped.
    stopped: AtomicBool,
}

/// A running metadata service on 127.0.0.1, stopped on drop.
pub struct MetadataServer {
    pub port: u16,
    shared: Arc<Shared>,
    accept: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

impl MetadataServer {
    /// Starts the service on a free port with no notice, tokens `Accepted`, no fault.
    pub fn start() -> anyhow::Result<MetadataServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                notice: None,
                tokens: Tokens::Accepted,
                max_ttl: None,
                issued: HashMap::new(),
                next_token: 0,
                fault: Fault::None,
                counts: Counts::default(),
            }),
            stopped: AtomicBool::new(false),
        });
        let server = MetadataServer { port, shared, accept: Mutex::new(None) };
        server.listen(listener)?;
        Ok(server)
    }

    /// The endpoint to give the agent.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panicking handler thread cannot leave the state half-written: every update is a
        // single assignment. Recover the guard rather than fail every later test.
        self.shared.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Schedules a termination at `at` (an RFC 3339 UTC time), or clears it.
    pub fn set_notice(&self, at: Option<&str>) {
        self.state().notice = at.map(str::to_owned);
    }

    /// Sets the token mode; issued tokens live at most `max_ttl` whatever the client asks.
    pub fn set_tokens(&self, tokens: Tokens, max_ttl: Option<Duration>) {
        let mut state = self.state();
        state.tokens = tokens;
        state.max_ttl = max_ttl;
    }

    /// Forgets every issued token, as a metadata service restart would.
    pub fn revoke_tokens(&self) {
        self.state().issued.clear();
    }

    pub fn set_fault(&self, fault: Fault) {
        self.state().fault = fault;
    }

    pub fn counts(&self) -> Counts {
        self.state().counts
    }

    /// Stops listening (connections are refused) or listens again on the same port.
    pub fn set_down(&self, down: bool) -> anyhow::Result<()> {
        let mut accept = self.accept.lock().unwrap_or_else(|e| e.into_inner());
        match (down, accept.take()) {
            (true, Some((stop, handle))) => {
                stop.store(true, Ordering::SeqCst);
                // Wake the blocking accept so the thread sees the flag and drops the listener.
                let _ = TcpStream::connect(("127.0.0.1", self.port));
                handle.join().map_err(|_| anyhow::anyhow!("metadata accept thread panicked"))?;
                Ok(())
            }
            (true, None) => Ok(()),
            (false, Some(running)) => {
                *accept = Some(running);
                Ok(())
            }
            (false, None) => {
                drop(accept);
                let deadline = Instant::now() + Duration::from_secs(10);
                let listener = loop {
                    match TcpListener::bind(("127.0.0.1", self.port)) {
                        Ok(l) => break l,
                        Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                        Err(e) => bail!("cannot listen on 127.0.0.1:{} again: {e}", self.port),
                    }
                };
                self.listen(listener)
            }
        }
    }

    fn listen(&self, listener: TcpListener) -> anyhow::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = self.shared.clone();
        let thread_stop = stop.clone();
        let handle = std::thread::Builder::new()
            .name("metadata-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if thread_stop.load(Ordering::SeqCst) || shared.stopped.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let shared = shared.clone();
                    let _ =
                        std::thread::Builder::new().name("metadata-conn".into()).spawn(move || serve(stream, &shared));
                }
            })
            .context("spawning the metadata server thread")?;
        *self.accept.lock().unwrap_or_else(|e| e.into_inner()) = Some((stop, handle));
        Ok(())
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        let _ = self.set_down(true);
    }
}

/// Reads one request and answers it, then closes the connection.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 64 * 1024 {
            return;
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let headers: HashMap<String, String> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();

    let answer = {
        let mut state = shared.state.lock().unwrap_or_else(|e| e.into_inner());
        answer(&mut state, &method, &path, &headers)
    };
    match answer {
        Some((code, body)) => {
            let reason = match code {
                200 => "OK",
                400 => "Bad Request",
                401 => "Unauthorized",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Internal Server Error",
            };
            let response = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes());
            let _ = stream.shutdown(Shutdown::Write);
        }
        None => {
            // Hang: hold the connection open without a byte until the fault is cleared.
            loop {
                std::thread::sleep(Duration::from_millis(50));
                let hanging = shared.state.lock().map(|s| s.fault == Fault::Hang).unwrap_or(false);
                if !hanging || shared.stopped.load(Ordering::SeqCst) {
                    return;
                }
            }
        }
    }
}

/// The answer to one request; `None` to hang.
fn answer(state: &mut State, method: &str, path: &str, headers: &HashMap<String, String>) -> Option<(u16, String)> {
    let get = method == "GET" && path == TERMINATION_TIME_PATH;
    if get {
        state.counts.gets += 1;
    }
    match state.fault {
        Fault::None => {}
        Fault::Garbage => {
            state.counts.faults += 1;
            return Some((200, "<html><body>Service Temporarily Unavailable</body></html>".into()));
        }
        Fault::Hang => {
            state.counts.faults += 1;
            return None;
        }
        Fault::ServerError => {
            state.counts.faults += 1;
            return Some((500, "internal error".into()));
        }
    }
    let now = Instant::now();
    match (method, path) {
        ("PUT", TOKEN_PATH) => {
            if state.tokens == Tokens::Unsupported {
                return Some((404, "not found".into()));
            }
            let Some(ttl) = headers.get(TOKEN_TTL_HEADER).and_then(|v| v.parse::<u64>().ok()) else {
                return Some((400, "missing or invalid X-aliyun-ecs-metadata-token-ttl-seconds".into()));
            };
            if !(1..=21600).contains(&ttl) {
                return Some((400, "token ttl out of range".into()));
            }
            let mut ttl = Duration::from_secs(ttl);
            if let Some(max) = state.max_ttl {
                ttl = ttl.min(max);
            }
            state.next_token += 1;
            let token = format!("token-{:06}", state.next_token);
            state.issued.retain(|_, expiry| *expiry > now);
            state.issued.insert(token.clone(), now + ttl);
            state.counts.tokens_issued += 1;
            Some((200, token))
        }
        ("GET", TERMINATION_TIME_PATH) => {
            let token = headers.get(TOKEN_HEADER);
            let valid = token.is_some_and(|t| state.issued.get(t).is_some_and(|expiry| *expiry > now));
            if valid {
                state.counts.gets_valid_token += 1;
            }
            if token.is_none() {
                state.counts.gets_without_token += 1;
            }
            let refuse = match state.tokens {
                Tokens::Unsupported => false,
                Tokens::Accepted => token.is_some() && !valid,
                Tokens::Required => !valid,
            };
            if refuse {
                state.counts.gets_rejected += 1;
                return Some((401, "unauthorized".into()));
            }
            match &state.notice {
                Some(at) => {
                    state.counts.notices_served += 1;
                    Some((200, at.clone()))
                }
                None => Some((404, "<?xml version=\"1.0\"?><Error>Not Found</Error>".into())),
            }
        }
        (_, TOKEN_PATH | TERMINATION_TIME_PATH) => Some((405, "method not allowed".into())),
        _ => Some((404, "not found".into())),
    }
}
