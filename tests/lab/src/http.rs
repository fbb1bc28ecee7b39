//! HTTP/1.1 for tests and the lab: the one place that reads and writes
//! HTTP messages by hand, for every test server and raw client (the
//! DigitalOcean fake and the relay in front of Prism, scripted servers,
//! the moto helper, the file server below).
//!
//! - [`read_request`] / [`Request::write_to`]: a request with its body
//!   (`Content-Length` or chunked), on a connection that may carry more.
//! - [`Response::write_to`] / [`parse_response`]: an answer, with
//!   `Content-Length` filled in from the body.
//! - [`request`]: one exchange on a fresh connection (`Connection:
//!   close`), for a test that must see statuses and headers a real client
//!   would hide or retry.
//! - [`FileServer`]: fixed bodies by exact path, on loopback with an
//!   ephemeral port or on a given address inside a network namespace (how
//!   the lab serves firstboot to its nodes, as a web server does on
//!   DigitalOcean); 404 for anything else; counts requests per path; stops
//!   when dropped. Connections are handled one at a time, one request each
//!   (`Connection: close`), which is all Ignition's sequential fetches need.
//!
//! Malformed input is an `InvalidData` error, which a server answers with
//! 400. Only what tests send is understood: origin-form targets, no
//! trailers, no `Expect: 100-continue`.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How often the accept loop checks the stop flag; bounds how long drop waits.
const POLL: Duration = Duration::from_millis(10);
/// A stalled client can hold the (single) serving thread at most this long.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// A longer request or response head is a broken peer.
const MAX_HEAD: usize = 16 * 1024;
/// Bodies in tests are small; a larger declared length is a broken peer.
const MAX_BODY: usize = 64 * 1024 * 1024;

type Hits = Arc<Mutex<HashMap<String, usize>>>;

pub struct FileServer {
    addr: SocketAddr,
    hits: Hits,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FileServer {
    /// Starts serving `files` (path such as `/payload`, body) on a fresh
    /// loopback port.
    pub fn start(files: Vec<(String, Vec<u8>)>) -> io::Result<FileServer> {
        Self::serve_listener(TcpListener::bind("127.0.0.1:0")?, files)
    }

    /// Starts serving on `addr` inside the network namespace at `netns`
    /// (such as `/run/netns/NAME`; see [`bind_in`]).
    pub fn start_in(
        netns: &Path,
        addr: SocketAddr,
        files: Vec<(String, Vec<u8>)>,
    ) -> io::Result<FileServer> {
        Self::serve_listener(bind_in(netns, addr)?, files)
    }

    fn serve_listener(
        listener: TcpListener,
        files: Vec<(String, Vec<u8>)>,
    ) -> io::Result<FileServer> {
        // Nonblocking accept so the loop can notice the stop flag; a blocked
        // accept() would keep the thread (and drop) waiting forever.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let files: HashMap<String, Vec<u8>> = files.into_iter().collect();
        let hits = Hits::default();
        let stop = Arc::new(AtomicBool::new(false));

        let thread = {
            let (hits, stop) = (Arc::clone(&hits), Arc::clone(&stop));
            thread::Builder::new()
                .name(format!("file-server-{}", addr.port()))
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match listener.accept() {
                            // A failed exchange only affects that client.
                            Ok((stream, _)) => {
                                let _ = serve(stream, &files, &hits);
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            // WouldBlock (nothing pending) or a transient
                            // error such as EMFILE: wait instead of spinning.
                            Err(_) => thread::sleep(POLL),
                        }
                    }
                })?
        };

        Ok(FileServer {
            addr,
            hits,
            stop,
            thread: Some(thread),
        })
    }

    /// `http://<address>:<port><path>`; `path` must start with `/`.
    pub fn url(&self, path: &str) -> String {
        assert!(
            path.starts_with('/'),
            "URL path must start with '/': {path}"
        );
        format!("http://{}{path}", self.addr)
    }

    /// How many well-formed requests asked for `path` (served or 404).
    pub fn hits(&self, path: &str) -> usize {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        hits.get(path).copied().unwrap_or(0)
    }
}

/// A listener on `addr` inside the network namespace at `netns` (such as
/// `/run/netns/NAME`). The socket is made by a short-lived thread that
/// enters the namespace (a namespace belongs to a thread, and a socket
/// keeps the one it was made in), so this process's own threads stay
/// where they are.
pub fn bind_in(netns: &Path, addr: SocketAddr) -> io::Result<TcpListener> {
    let netns = netns.to_owned();
    thread::spawn(move || -> io::Result<TcpListener> {
        let ns = std::fs::File::open(&netns)?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        TcpListener::bind(addr)
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // Returns within POLL, or IO_TIMEOUT if a client is stalled.
            let _ = thread.join();
        }
    }
}

/// Reads one request and answers it.
fn serve(stream: TcpStream, files: &HashMap<String, Vec<u8>>, hits: &Hits) -> io::Result<()> {
    // Accepted sockets must block (with timeouts) even where they would
    // inherit the listener's nonblocking flag.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let answer = |status: u16, body: &[u8]| {
        Response::new(status)
            .with_header("Content-Type", "application/octet-stream")
            .with_header("Connection", "close")
            .with_body(body)
    };

    let request = match read_request(&mut BufReader::new(stream)) {
        Ok(Some(request)) => request,
        // The client gave up before sending a request.
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => {
            return answer(400, format!("{e}\n").as_bytes()).write_to(&mut writer, true)
        }
        Err(e) => return Err(e),
    };
    // Files are keyed by path alone; any query string is ignored.
    *hits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(request.path().to_string())
        .or_default() += 1;

    let with_body = match request.method.as_str() {
        "GET" => true,
        "HEAD" => false,
        _ => return answer(405, b"GET or HEAD only\n").write_to(&mut writer, true),
    };
    match files.get(request.path()) {
        Some(body) => answer(200, body),
        None => answer(404, b"not found\n"),
    }
    .write_to(&mut writer, with_body)
}

// ---------------------------------------------------------------- messages

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// The value of header `name` (any case) in `headers`.
fn find<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One request, as a test server reads it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// As sent: path and query (`/v2/droplets?page=2`).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// In order, names as sent.
    pub headers: Vec<(String, String)>,
    /// Decoded: a chunked body arrives whole, and its headers then say
    /// `Content-Length` instead.
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(&self.target, |(p, _)| p)
    }

    /// The query after `?`, or "".
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// Writes the request: line, headers as they are (a `Content-Length`
    /// added if they have none and there is a body), body.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut head = format!("{} {} {}\r\n", self.method, self.target, self.version);
        write_headers(
            &mut head,
            &self.headers,
            !self.body.is_empty(),
            self.body.len(),
        );
        w.write_all(head.as_bytes())?;
        w.write_all(&self.body)?;
        w.flush()
    }
}

/// Reads the next request on a connection: `Ok(None)` when the peer closed
/// it (or sent only blank lines) instead. Leaves `reader` at the next
/// request, so a keep-alive connection can be read again.
pub fn read_request(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let Some(lines) = read_head(reader)? else {
        return Ok(None);
    };
    let line = &lines[0];
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(format!("bad request line {line:?}")));
    };
    if method.is_empty() || !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Err(invalid(format!("bad request line {line:?}")));
    }
    let mut headers = parse_headers(&lines[1..])?;
    let body = read_body(reader, &mut headers, false)?;
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers,
        body,
    }))
}

/// One answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// In order, names as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: &str, value: &str) -> Response {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Response {
        self.body = body.into();
        self
    }

    /// The first value of header `name`, in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        find(&self.headers, name)
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Writes the answer: status line with the standard reason, headers as
    /// they are, a `Content-Length` from the body unless they have one or
    /// the status allows no body (1xx, 204, 304), then the body, unless
    /// `send_body` is false (an answer to HEAD).
    pub fn write_to(&self, w: &mut impl Write, send_body: bool) -> io::Result<()> {
        let bodiless = self.status < 200 || self.status == 204 || self.status == 304;
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        write_headers(&mut head, &self.headers, !bodiless, self.body.len());
        w.write_all(head.as_bytes())?;
        if send_body && !bodiless {
            w.write_all(&self.body)?;
        }
        w.flush()
    }
}

/// Parses a whole answer as read to the end of its connection: a chunked
/// body is decoded, a body longer than its `Content-Length` cut to it, a
/// shorter one refused.
pub fn parse_response(raw: &[u8]) -> io::Result<Response> {
    parse_answer(raw, false)
}

/// `parse_response`; `to_head` for an answer to HEAD, which has no body
/// whatever its headers say.
fn parse_answer(raw: &[u8], to_head: bool) -> io::Result<Response> {
    let mut reader = raw;
    let lines = read_head(&mut reader)?.ok_or_else(|| invalid("an empty answer"))?;
    let line = &lines[0];
    let status = match line.split(' ').collect::<Vec<_>>()[..] {
        [version, code, ..] if version.starts_with("HTTP/1.") => code.parse().ok(),
        _ => None,
    }
    .filter(|code| (100..1000).contains(code))
    .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = parse_headers(&lines[1..])?;
    let bodiless = to_head || status < 200 || status == 204 || status == 304;
    let body = if bodiless {
        Vec::new()
    } else {
        read_body(&mut reader, &mut headers, true)?
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// One exchange with the server at `address` (`host:port`) on a fresh
/// connection: the request with a `Host`, `Connection: close` and
/// `headers`, then the whole answer (waited for at most 30 s).
pub fn request(
    address: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut all = vec![
        ("Host".to_owned(), address.to_owned()),
        ("Connection".to_owned(), "close".to_owned()),
    ];
    all.extend(
        headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    if !matches!(method, "GET" | "HEAD") && find(&all, "content-length").is_none() {
        // Servers may wait for a body they are not told is empty.
        all.push(("Content-Length".to_owned(), body.len().to_string()));
    }
    Request {
        method: method.to_owned(),
        target: target.to_owned(),
        version: "HTTP/1.1".to_owned(),
        headers: all,
        body: body.to_vec(),
    }
    .write_to(&mut stream)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_answer(&raw, method == "HEAD")
}

/// The lines of a head, up to (not including) the blank line that ends
/// it; `None` at the end of input before any. Blank lines before a head
/// are skipped, as RFC 9112 allows.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Vec<String>>> {
    let mut lines = Vec::new();
    let mut size = 0;
    loop {
        let mut line = Vec::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD + 1 - size) as u64)
            .read_until(b'\n', &mut line)?;
        size += n;
        if size > MAX_HEAD {
            return Err(invalid("head too long"));
        }
        if n == 0 && lines.is_empty() {
            return Ok(None);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed inside a head",
            ));
        }
        let text = String::from_utf8(line).map_err(|_| invalid("head is not UTF-8"))?;
        let text = text.trim_end_matches(['\r', '\n']);
        if !text.is_empty() {
            lines.push(text.to_owned());
        } else if !lines.is_empty() {
            return Ok(Some(lines));
        }
    }
}

fn parse_headers(lines: &[String]) -> io::Result<Vec<(String, String)>> {
    lines
        .iter()
        .map(|line| match line.split_once(':') {
            Some((name, value)) if !name.is_empty() && !name.contains(' ') => {
                Ok((name.to_owned(), value.trim().to_owned()))
            }
            _ => Err(invalid(format!("bad header line {line:?}"))),
        })
        .collect()
}

/// Reads the body the headers announce (chunked or `Content-Length`);
/// with neither, an answer's body runs to the end of input and a
/// request's is empty. A decoded chunked body leaves the headers saying
/// its `Content-Length`.
fn read_body(
    reader: &mut impl BufRead,
    headers: &mut Vec<(String, String)>,
    to_end: bool,
) -> io::Result<Vec<u8>> {
    let chunked = find(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().ends_with("chunked"));
    if chunked {
        let body = read_chunked(reader)?;
        headers.retain(|(k, _)| {
            !k.eq_ignore_ascii_case("transfer-encoding")
                && !k.eq_ignore_ascii_case("content-length")
        });
        headers.push(("Content-Length".to_owned(), body.len().to_string()));
        return Ok(body);
    }
    let length = match find(headers, "content-length") {
        Some(v) => Some(
            v.parse::<usize>()
                .ok()
                .filter(|n| *n <= MAX_BODY)
                .ok_or_else(|| invalid(format!("bad Content-Length {v:?}")))?,
        ),
        None => None,
    };
    let mut body = Vec::new();
    match (length, to_end) {
        (Some(n), _) => {
            reader.by_ref().take(n as u64).read_to_end(&mut body)?;
            if body.len() < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("body cut short: {} of {n} bytes", body.len()),
                ));
            }
        }
        (None, true) => {
            reader.read_to_end(&mut body)?;
        }
        (None, false) => {}
    }
    Ok(body)
}

fn read_chunked(reader: &mut impl BufRead) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        reader.by_ref().take(1024).read_line(&mut line)?;
        let size = line.trim_end().split(';').next().unwrap_or("");
        let size = usize::from_str_radix(size.trim(), 16)
            .ok()
            .filter(|n| body.len() + n <= MAX_BODY)
            .ok_or_else(|| invalid(format!("bad chunk size line {line:?}")))?;
        if size == 0 {
            // Trailers are not expected: the blank line that ends the body.
            let mut end = String::new();
            reader.by_ref().take(1024).read_line(&mut end)?;
            return Ok(body);
        }
        let start = body.len();
        reader.by_ref().take(size as u64).read_to_end(&mut body)?;
        let mut crlf = [0; 2];
        if body.len() - start < size || reader.read_exact(&mut crlf).is_err() || crlf != *b"\r\n" {
            return Err(invalid("chunk cut short"));
        }
    }
}

/// Appends `headers` and the blank line to `head`; a `Content-Length` of
/// `length` first if `with_length` and the headers have none.
fn write_headers(
    head: &mut String,
    headers: &[(String, String)],
    with_length: bool,
    length: usize,
) {
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if with_length && find(headers, "content-length").is_none() {
        head.push_str(&format!("Content-Length: {length}\r\n"));
    }
    head.push_str("\r\n");
}

/// The standard reason phrase of the statuses tests use.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Close a connection whose answer was written the way a web server
/// does (Apache's lingering close): say we are done (FIN), then read and
/// drop what the client still sends until it closes too, within a bound.
/// Closing a socket with unread input makes the kernel send a reset
/// instead (RFC 1122 4.2.2.13, RFC 2525 2.17), which discards the answer
/// the client has not read yet: a download cut off as `connection reset
/// by peer`.
pub fn close_gracefully(stream: &TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut sink = [0u8; 4096];
    let mut reader = stream;
    let mut drained = 0usize;
    // At most 1 MiB: a client that keeps sending is reset after all.
    while drained < 1 << 20 {
        match reader.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(raw: &[u8]) -> Vec<io::Result<Option<Request>>> {
        let mut reader = raw;
        let mut out = Vec::new();
        loop {
            let next = read_request(&mut reader);
            let done = !matches!(next, Ok(Some(_)));
            out.push(next);
            if done {
                return out;
            }
        }
    }

    #[test]
    fn requests_on_one_connection_with_either_body() {
        let raw = b"POST /v2/tags?x=1 HTTP/1.1\r\nHost: h\r\ncontent-length: 4\r\n\r\nbody\
                    \r\nPUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3;ext\r\nabc\r\n2\r\nde\r\n0\r\n\r\n\
                    GET / HTTP/1.0\r\n\r\n";
        let requests: Vec<Request> = read_all(raw)
            .into_iter()
            .map_while(|r| r.unwrap())
            .collect();
        assert_eq!(requests.len(), 3);
        let first = &requests[0];
        assert_eq!(
            (first.method.as_str(), first.path(), first.query()),
            ("POST", "/v2/tags", "x=1")
        );
        assert_eq!(
            (first.header("HOST"), first.body.as_slice()),
            (Some("h"), &b"body"[..])
        );
        let chunked = &requests[1];
        assert_eq!(chunked.body, b"abcde");
        assert_eq!(chunked.header("transfer-encoding"), None);
        assert_eq!(chunked.header("content-length"), Some("5"));
        assert_eq!(
            (requests[2].version.as_str(), requests[2].body.len()),
            ("HTTP/1.0", 0)
        );

        // What a request writes, a server reads back the same.
        let mut wire = Vec::new();
        chunked.write_to(&mut wire).unwrap();
        let again = read_request(&mut wire.as_slice()).unwrap().unwrap();
        assert_eq!(
            (again.target, again.body),
            (chunked.target.clone(), chunked.body.clone())
        );
    }

    #[test]
    fn malformed_requests_are_invalid_data() {
        let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        for raw in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/2\r\n\r\n",
            b"GET http://elsewhere/ HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: many\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            long.as_bytes(),
        ] {
            let err = read_request(&mut &raw[..]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{raw:?}: {err}");
        }
        let cut = read_request(&mut &b"POST / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort"[..]);
        assert_eq!(cut.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(read_request(&mut &b"\r\n"[..]).unwrap().is_none());
    }

    #[test]
    fn responses_round_trip() {
        let response = Response::new(201)
            .with_header("Content-Type", "application/json")
            .with_body(&b"{}"[..]);
        let mut wire = Vec::new();
        response.write_to(&mut wire, true).unwrap();
        assert!(wire.starts_with(b"HTTP/1.1 201 Created\r\n"));
        let back = parse_response(&wire).unwrap();
        assert_eq!((back.status, back.body.as_slice()), (201, &b"{}"[..]));
        assert_eq!(back.header("content-length"), Some("2"));

        let mut wire = Vec::new();
        Response::new(204).write_to(&mut wire, true).unwrap();
        assert_eq!(wire, b"HTTP/1.1 204 No Content\r\n\r\n");
        let mut wire = Vec::new();
        Response::new(200)
            .with_body("abc")
            .write_to(&mut wire, false)
            .unwrap();
        assert!(wire.ends_with(b"Content-Length: 3\r\n\r\n"));
        assert!(
            parse_response(&wire).is_err(),
            "a body announced but missing"
        );
        assert_eq!(parse_answer(&wire, true).unwrap().body, b"");

        let chunked =
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nwiki\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().body, b"wiki");
        let to_end = b"HTTP/1.0 500 Oops\r\n\r\nall of it";
        assert_eq!(parse_response(to_end).unwrap().text(), "all of it");
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    /// An answer the client has not read yet, from a server that did not
    /// read all the client sent: a plain close resets the connection and
    /// the client loses the answer (the control), while
    /// [`close_gracefully`] lets it read every byte.
    #[test]
    fn a_graceful_close_never_resets_an_answer_being_read() {
        // Fits in loopback's socket buffers: written whole before the
        // client reads a byte.
        let answer = vec![b'x'; 64 << 10];
        let read_all = |graceful: bool| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let body = answer.clone();
            let (closed, was_closed) = std::sync::mpsc::channel();
            let server = thread::spawn(move || {
                let (mut stream, _) = listener.accept().unwrap();
                let mut first = [0u8; 4];
                stream.read_exact(&mut first).unwrap();
                // The rest of what the client sent stays unread.
                stream.write_all(&body).unwrap();
                if graceful {
                    // The answer is out and the write side shut: the
                    // client reads now, then closes, which ends the drain.
                    let _ = closed.send(());
                    close_gracefully(&stream);
                } else {
                    drop(stream);
                    let _ = closed.send(());
                }
            });
            let mut client = TcpStream::connect(address).unwrap();
            client
                .write_all(b"GET and more the server never reads")
                .unwrap();
            was_closed.recv().unwrap();
            let mut got = Vec::new();
            let result = client.read_to_end(&mut got);
            drop(client);
            server.join().unwrap();
            result.map(|_| got.len()).map_err(|e| e.kind())
        };
        assert_eq!(
            read_all(false),
            Err(io::ErrorKind::ConnectionReset),
            "the control"
        );
        assert_eq!(read_all(true), Ok(answer.len()));
    }
}
