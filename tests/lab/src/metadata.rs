//! The lab's stand-in for a cloud's metadata service, at the lab image's
//! platform address (never the real one). Like DigitalOcean's, it answers
//! each droplet about itself: the asker is known by its source address,
//! and a droplet registered with [`MetadataServer::register`] gets its own
//! files (user data, interfaces). Anyone else gets the default files.
//! Requests are counted per path, so a test can tell whether one arrived.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::http::{read_request, Response};

const POLL: Duration = Duration::from_millis(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Path → body.
pub type Files = BTreeMap<String, Vec<u8>>;

#[derive(Default)]
struct Table {
    /// A droplet's files, under each of its addresses.
    droplets: HashMap<Ipv4Addr, Arc<Files>>,
    default: Arc<Files>,
    hits: HashMap<String, usize>,
    /// Requests answered from a droplet's own files.
    answered: HashMap<Ipv4Addr, usize>,
}

pub struct MetadataServer {
    table: Arc<Mutex<Table>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetadataServer {
    /// Serve on `addr` inside the namespace at `netns`; `default` for
    /// askers that are no registered droplet.
    pub fn start_in(netns: &Path, addr: SocketAddr, default: Files) -> io::Result<MetadataServer> {
        let listener = crate::http::bind_in(netns, addr)?;
        listener.set_nonblocking(true)?;
        let table = Arc::new(Mutex::new(Table {
            default: Arc::new(default),
            ..Table::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (table, stop) = (table.clone(), stop.clone());
            thread::Builder::new()
                .name("metadata".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match listener.accept() {
                            Ok((stream, peer)) => {
                                let table = table.clone();
                                // One at a time would let one slow node
                                // hold up every other.
                                thread::spawn(move || {
                                    let _ = serve(stream, peer, &table);
                                });
                            }
                            Err(_) => thread::sleep(POLL),
                        }
                    }
                })?
        };
        Ok(MetadataServer {
            table,
            stop,
            thread: Some(thread),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Answer requests from any of `addresses` with `files`.
    pub fn register(&self, addresses: &[Ipv4Addr], files: Files) {
        let files = Arc::new(files);
        let mut table = self.lock();
        for address in addresses {
            table.droplets.insert(*address, files.clone());
        }
    }

    /// Forget the droplet at `addresses`.
    pub fn unregister(&self, addresses: &[Ipv4Addr]) {
        let mut table = self.lock();
        for address in addresses {
            table.droplets.remove(address);
        }
    }

    /// How many well-formed requests asked for `path`.
    pub fn hits(&self, path: &str) -> usize {
        self.lock().hits.get(path).copied().unwrap_or(0)
    }

    /// How many requests from `address` were answered from a registered
    /// droplet's own files.
    pub fn answered(&self, address: Ipv4Addr) -> usize {
        self.lock().answered.get(&address).copied().unwrap_or(0)
    }
}

impl Drop for MetadataServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(stream: TcpStream, peer: SocketAddr, table: &Mutex<Table>) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let Some(request) = read_request(&mut BufReader::new(stream))? else {
        return Ok(());
    };
    let source = match peer.ip() {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    };
    let body = {
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
        *table.hits.entry(request.path().to_owned()).or_default() += 1;
        let own = source.and_then(|s| table.droplets.get(&s).cloned());
        if let (Some(_), Some(source)) = (&own, source) {
            *table.answered.entry(source).or_default() += 1;
        }
        let files = own.unwrap_or_else(|| table.default.clone());
        files.get(request.path()).cloned()
    };
    let answer = match (request.method.as_str(), body) {
        ("GET" | "HEAD", Some(body)) => Response::new(200).with_body(body),
        ("GET" | "HEAD", None) => Response::new(404).with_body("not found\n"),
        _ => Response::new(405).with_body("GET only\n"),
    };
    answer
        .with_header("Content-Type", "text/plain")
        .with_header("Connection", "close")
        .write_to(&mut writer, request.method != "HEAD")
}
