//! A tiny HTTP/1.1 file server for tests and the lab.
//!
//! Serves fixed bodies by exact path, on loopback with an ephemeral port or
//! on a given address inside a network namespace (how the lab serves
//! firstboot to its nodes, as a web server does on DigitalOcean); answers
//! 404 for anything else, counts requests per path, and stops when
//! dropped. Connections are handled one at a time, one request each
//! (`Connection: close`), which is all Ignition's sequential fetches need.

use std::collections::HashMap;
use std::io::{self, Read, Write};
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
/// Requests carry no bodies here; a longer head is a broken client.
const MAX_HEAD: usize = 16 * 1024;

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
    /// (such as `/run/netns/NAME`). The socket is made by a short-lived
    /// thread that enters the namespace (a namespace belongs to a thread,
    /// and a socket keeps the one it was made in), so this process's own
    /// threads stay where they are.
    pub fn start_in(
        netns: &Path,
        addr: SocketAddr,
        files: Vec<(String, Vec<u8>)>,
    ) -> io::Result<FileServer> {
        let netns = netns.to_owned();
        let listener = thread::spawn(move || -> io::Result<TcpListener> {
            let ns = std::fs::File::open(&netns)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            TcpListener::bind(addr)
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))??;
        Self::serve_listener(listener, files)
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

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // Returns within POLL, or IO_TIMEOUT if a client is stalled.
            let _ = thread.join();
        }
    }
}

/// Reads one request head and answers it.
fn serve(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>, hits: &Hits) -> io::Result<()> {
    // Accepted sockets must block (with timeouts) even where they would
    // inherit the listener's nonblocking flag.
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;

    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(
                &mut stream,
                "400 Bad Request",
                b"request head too long\n",
                true,
            );
        }
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(()); // client gave up before finishing the head
        }
        head.extend_from_slice(&buf[..n]);
    }

    let head = String::from_utf8_lossy(&head);
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return respond(&mut stream, "400 Bad Request", b"bad request line\n", true);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return respond(&mut stream, "400 Bad Request", b"bad request line\n", true);
    }
    // Files are keyed by path alone; ignore any query string.
    let path = target.split('?').next().unwrap_or(target);
    *hits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(path.to_string())
        .or_default() += 1;

    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => {
            return respond(
                &mut stream,
                "405 Method Not Allowed",
                b"GET or HEAD only\n",
                true,
            )
        }
    };
    match files.get(path) {
        Some(body) => respond(&mut stream, "200 OK", body, with_body),
        None => respond(&mut stream, "404 Not Found", b"not found\n", with_body),
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &[u8], with_body: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n\
         Content-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    if with_body {
        stream.write_all(body)?;
    }
    stream.flush()
}
