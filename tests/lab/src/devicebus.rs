//! systemd's answer to "wait for this device", for Ignition's disks stage.
//!
//! Before it formats anything, Ignition's disks stage asks systemd, over
//! D-Bus on `/run/systemd/private`, to start each device's `.device`
//! unit, and waits for the `JobRemoved` signal that says the device is
//! plugged (udev saw it). On a node that is the initramfs's systemd; the
//! lab runs Ignition from the host, which has no systemd or udev, so this
//! stands in for that one exchange: the devices the lab plugged (loop
//! devices under DigitalOcean's names) are answered `done` at once, any
//! other `timeout` after [`UNPLUGGED_WAIT`], as systemd would after its
//! job timeout. Everything else Ignition does to the disks (probing with
//! libblkid, mkfs, the device aliases) is its own, against the real loop
//! devices.
//!
//! The wire protocol is D-Bus's (little-endian marshalling, the SASL
//! `EXTERNAL` handshake of a private connection, no bus daemon): enough
//! of it for what go-systemd sends, which is `AddMatch`, `StartUnit` and
//! (on a bus) `Hello`; any other call gets `UnknownMethod`.

use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// How long a device the lab did not plug is waited for before `timeout`
/// (systemd's default job timeout for devices is 90 s; nothing in the lab
/// plugs a device late, so waiting that long would only slow a failure).
pub const UNPLUGGED_WAIT: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(10);
/// A message larger than this is a broken peer.
const MAX_MESSAGE: usize = 1 << 20;

const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;
const SIGNAL: u8 = 4;
const NO_REPLY_EXPECTED: u8 = 1;

/// The stand-in, listening on `<dir>/private` until dropped.
pub struct DeviceBus {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    started: Arc<Mutex<Vec<String>>>,
}

struct Shared {
    plugged: BTreeSet<String>,
    /// Every connection, for broadcasting signals (go-systemd listens for
    /// `JobRemoved` on a second connection of its own).
    connections: Mutex<Vec<UnixStream>>,
    next_serial: AtomicU32,
    next_job: AtomicU32,
    started: Arc<Mutex<Vec<String>>>,
}

impl DeviceBus {
    /// Listen on `<dir>/private` (bind-mount `dir` on `/run/systemd` where
    /// Ignition runs); `plugged` are the device paths that exist there.
    pub fn start(dir: &Path, plugged: BTreeSet<String>) -> io::Result<DeviceBus> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("private");
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let started = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            plugged,
            connections: Mutex::new(Vec::new()),
            next_serial: AtomicU32::new(1),
            next_job: AtomicU32::new(1),
            started: started.clone(),
        });
        let thread = {
            let stop = stop.clone();
            thread::Builder::new()
                .name("device-bus".into())
                .spawn(move || {
                    while !stop.load(Ordering::Acquire) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                let shared = shared.clone();
                                thread::spawn(move || {
                                    let _ = serve(stream, &shared);
                                });
                            }
                            Err(_) => thread::sleep(POLL),
                        }
                    }
                    // Connections end with Ignition, whose process exits.
                    for c in shared
                        .connections
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .iter()
                    {
                        let _ = c.shutdown(std::net::Shutdown::Both);
                    }
                })?
        };
        Ok(DeviceBus {
            socket,
            stop,
            thread: Some(thread),
            started,
        })
    }

    /// The units Ignition asked to start, in order.
    pub fn started(&self) -> Vec<String> {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for DeviceBus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The path a `.device` unit stands for (`dev-disk-by\x2did-x.device` →
/// `/dev/disk/by-id/x`): systemd's path escaping undone.
pub fn device_path(unit: &str) -> Option<String> {
    let escaped = unit.strip_suffix(".device")?;
    let mut out = Vec::new();
    let bytes = escaped.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'-' => out.push(b'/'),
            b'\\' if bytes.get(i + 1) == Some(&b'x') && i + 3 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 2..i + 4]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(format!("/{}", String::from_utf8(out).ok()?))
}

fn serve(stream: UnixStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream.try_clone()?;
    authenticate(&mut reader, &mut writer)?;
    shared
        .connections
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(stream.try_clone()?);
    loop {
        let Some(message) = read_message(&mut reader)? else {
            return Ok(());
        };
        if message.kind != METHOD_CALL {
            continue;
        }
        let serial = shared.next_serial.fetch_add(1, Ordering::Relaxed);
        let reply = |body: Option<(&str, Vec<u8>)>| Message::reply(serial, message.serial, body);
        let (answer, then) = match (message.interface.as_deref(), message.member.as_str()) {
            (Some("org.freedesktop.DBus") | None, "Hello") => {
                let mut body = Body::default();
                body.string(":1.1");
                (reply(Some(("s", body.0))), None)
            }
            (_, "AddMatch" | "RemoveMatch") => (reply(None), None),
            (Some("org.freedesktop.systemd1.Manager") | None, "StartUnit") => {
                let unit = message.first_string().unwrap_or_default();
                shared
                    .started
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(unit.clone());
                let job = format!(
                    "/org/freedesktop/systemd1/job/{}",
                    shared.next_job.fetch_add(1, Ordering::Relaxed)
                );
                let mut body = Body::default();
                body.string(&job);
                (reply(Some(("o", body.0))), Some((unit, job)))
            }
            (_, member) => (
                Message::error(
                    serial,
                    message.serial,
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    &format!("the lab's device bus does not answer {member}"),
                ),
                None,
            ),
        };
        if message.flags & NO_REPLY_EXPECTED == 0 {
            writer.write_all(&answer)?;
        }
        if let Some((unit, job)) = then {
            let plugged = device_path(&unit).is_some_and(|p| shared.plugged.contains(&p));
            if !plugged {
                thread::sleep(UNPLUGGED_WAIT);
            }
            let id: u32 = job
                .rsplit('/')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let mut body = Body::default();
            body.u32(id);
            body.string(&job);
            body.string(&unit);
            body.string(if plugged { "done" } else { "timeout" });
            let signal = Message::signal(
                shared.next_serial.fetch_add(1, Ordering::Relaxed),
                "/org/freedesktop/systemd1",
                "org.freedesktop.systemd1.Manager",
                "JobRemoved",
                "uoss",
                body.0,
            );
            for connection in shared
                .connections
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
            {
                let _ = (&*connection).write_all(&signal);
            }
        }
    }
}

/// The SASL exchange of a private connection: a NUL byte, then lines;
/// `EXTERNAL` is accepted (the socket is the lab's, reachable by root
/// only), unix fd passing agreed (none is ever sent), until `BEGIN`.
fn authenticate(reader: &mut impl BufRead, writer: &mut impl Write) -> io::Result<()> {
    let mut nul = [0u8; 1];
    reader.read_exact(&mut nul)?;
    if nul[0] != 0 {
        return Err(invalid("the client did not start with a NUL byte"));
    }
    for _ in 0..16 {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("the client left during authentication"));
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["AUTH", "EXTERNAL", ..] => "OK 6c61622d6465766963652d6275732d31\r\n",
            ["AUTH", ..] => "REJECTED EXTERNAL\r\n",
            ["NEGOTIATE_UNIX_FD"] => "AGREE_UNIX_FD\r\n",
            ["BEGIN"] => return Ok(()),
            _ => "ERROR\r\n",
        };
        writer.write_all(answer.as_bytes())?;
    }
    Err(invalid("authentication did not end"))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The parts of an incoming message this stand-in reads.
struct Incoming {
    kind: u8,
    flags: u8,
    serial: u32,
    interface: Option<String>,
    member: String,
    signature: String,
    body: Vec<u8>,
}

impl Incoming {
    /// The first argument, when the signature starts with a string.
    fn first_string(&self) -> Option<String> {
        if !self.signature.starts_with('s') {
            return None;
        }
        let mut at = 0;
        read_string(&self.body, &mut at)
    }
}

fn read_message(reader: &mut impl Read) -> io::Result<Option<Incoming>> {
    let mut fixed = [0u8; 16];
    match reader.read_exact(&mut fixed) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if fixed[0] != b'l' {
        return Err(invalid("only little-endian messages are understood"));
    }
    let word =
        |at: usize| u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]);
    let (body_len, serial, fields_len) = (word(4) as usize, word(8), word(12) as usize);
    let header_end = (16 + fields_len).div_ceil(8) * 8;
    if header_end + body_len > MAX_MESSAGE {
        return Err(invalid("message too large"));
    }
    let mut rest = vec![0u8; header_end - 16 + body_len];
    reader.read_exact(&mut rest)?;
    let mut message = fixed.to_vec();
    message.extend_from_slice(&rest);
    let mut incoming = Incoming {
        kind: fixed[1],
        flags: fixed[2],
        serial,
        interface: None,
        member: String::new(),
        signature: String::new(),
        body: message[header_end..].to_vec(),
    };
    let mut at = 16;
    while at < 16 + fields_len {
        at = at.div_ceil(8) * 8;
        let code = *message.get(at).ok_or_else(|| invalid("truncated header"))?;
        at += 1;
        let signature = read_signature(&message, &mut at).ok_or_else(|| invalid("bad variant"))?;
        match signature.as_str() {
            "s" | "o" => {
                let value = read_string(&message, &mut at).ok_or_else(|| invalid("bad string"))?;
                match code {
                    2 => incoming.interface = Some(value),
                    3 => incoming.member = value,
                    _ => {}
                }
            }
            "g" => {
                let value =
                    read_signature(&message, &mut at).ok_or_else(|| invalid("bad signature"))?;
                if code == 8 {
                    incoming.signature = value;
                }
            }
            "u" => {
                at = at.div_ceil(4) * 4 + 4;
            }
            other => return Err(invalid(&format!("unexpected header field type {other}"))),
        }
    }
    Ok(Some(incoming))
}

fn read_string(bytes: &[u8], at: &mut usize) -> Option<String> {
    *at = at.div_ceil(4) * 4;
    let len = u32::from_le_bytes(bytes.get(*at..*at + 4)?.try_into().ok()?) as usize;
    let text = std::str::from_utf8(bytes.get(*at + 4..*at + 4 + len)?).ok()?;
    *at += 4 + len + 1;
    Some(text.to_owned())
}

fn read_signature(bytes: &[u8], at: &mut usize) -> Option<String> {
    let len = *bytes.get(*at)? as usize;
    let text = std::str::from_utf8(bytes.get(*at + 1..*at + 1 + len)?).ok()?;
    *at += 1 + len + 1;
    Some(text.to_owned())
}

/// A message body being marshalled (offsets from its start, which is
/// 8-aligned in the message, so alignment is the same).
#[derive(Default)]
struct Body(Vec<u8>);

impl Body {
    fn align(&mut self, n: usize) {
        while !self.0.len().is_multiple_of(n) {
            self.0.push(0);
        }
    }

    fn u32(&mut self, value: u32) {
        self.align(4);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    /// A string or an object path.
    fn string(&mut self, text: &str) {
        self.u32(text.len() as u32);
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(0);
    }

    fn signature(&mut self, text: &str) {
        self.0.push(text.len() as u8);
        self.0.extend_from_slice(text.as_bytes());
        self.0.push(0);
    }
}

/// Header field values.
enum Field<'a> {
    Path(&'a str),
    Interface(&'a str),
    Member(&'a str),
    ErrorName(&'a str),
    ReplySerial(u32),
    Signature(&'a str),
}

struct Message;

impl Message {
    fn reply(serial: u32, to: u32, body: Option<(&str, Vec<u8>)>) -> Vec<u8> {
        match body {
            Some((signature, body)) => encode(
                METHOD_RETURN,
                serial,
                &[Field::ReplySerial(to), Field::Signature(signature)],
                &body,
            ),
            None => encode(METHOD_RETURN, serial, &[Field::ReplySerial(to)], &[]),
        }
    }

    fn error(serial: u32, to: u32, name: &str, text: &str) -> Vec<u8> {
        let mut body = Body::default();
        body.string(text);
        encode(
            ERROR,
            serial,
            &[
                Field::ErrorName(name),
                Field::ReplySerial(to),
                Field::Signature("s"),
            ],
            &body.0,
        )
    }

    fn signal(
        serial: u32,
        path: &str,
        interface: &str,
        member: &str,
        signature: &str,
        body: Vec<u8>,
    ) -> Vec<u8> {
        encode(
            SIGNAL,
            serial,
            &[
                Field::Path(path),
                Field::Interface(interface),
                Field::Member(member),
                Field::Signature(signature),
            ],
            &body,
        )
    }
}

fn encode(kind: u8, serial: u32, fields: &[Field], body: &[u8]) -> Vec<u8> {
    let mut out = Body(vec![b'l', kind, 0, 1]);
    out.0.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.0.extend_from_slice(&serial.to_le_bytes());
    out.0.extend_from_slice(&[0; 4]);
    for field in fields {
        out.align(8);
        match field {
            Field::Path(p) => {
                out.0.push(1);
                out.signature("o");
                out.string(p);
            }
            Field::Interface(s) => {
                out.0.push(2);
                out.signature("s");
                out.string(s);
            }
            Field::Member(s) => {
                out.0.push(3);
                out.signature("s");
                out.string(s);
            }
            Field::ErrorName(s) => {
                out.0.push(4);
                out.signature("s");
                out.string(s);
            }
            Field::ReplySerial(n) => {
                out.0.push(5);
                out.signature("u");
                out.u32(*n);
            }
            Field::Signature(g) => {
                out.0.push(8);
                out.signature("g");
                out.signature(g);
            }
        }
    }
    let fields_len = (out.0.len() - 16) as u32;
    out.0[12..16].copy_from_slice(&fields_len.to_le_bytes());
    out.align(8);
    out.0.extend_from_slice(body);
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_units_name_their_paths() {
        assert_eq!(
            device_path("dev-disk-by\\x2did-scsi\\x2d0DO_Volume_n1\\x2dlab\\x2ddata.device")
                .as_deref(),
            Some("/dev/disk/by-id/scsi-0DO_Volume_n1-lab-data")
        );
        assert_eq!(device_path("sshd.service"), None);
    }

    /// A client as go-systemd is one: handshake, AddMatch, StartUnit; the
    /// reply names a job and the signal finishes it.
    #[test]
    fn start_unit_is_answered_with_a_job_and_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let plugged = BTreeSet::from(["/dev/disk/by-id/scsi-0DO_Volume_x".to_owned()]);
        let bus = DeviceBus::start(dir.path(), plugged).unwrap();
        let mut client = UnixStream::connect(dir.path().join("private")).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reader = BufReader::new(client.try_clone().unwrap());
        client.write_all(b"\0AUTH\r\n").unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("REJECTED EXTERNAL"), "{line}");
        client.write_all(b"AUTH EXTERNAL 30\r\n").unwrap();
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("OK "), "{line}");
        client.write_all(b"BEGIN\r\n").unwrap();

        let call = |serial: u32, member: &str, interface: &str, arg: &str| {
            let mut body = Body::default();
            body.string(arg);
            body.string("replace");
            encode(
                METHOD_CALL,
                serial,
                &[
                    Field::Path("/org/freedesktop/systemd1"),
                    Field::Interface(interface),
                    Field::Member(member),
                    Field::Signature("ss"),
                ],
                &body.0,
            )
        };
        client
            .write_all(&call(
                1,
                "AddMatch",
                "org.freedesktop.DBus",
                "type='signal'",
            ))
            .unwrap();
        let answer = read_message(&mut reader).unwrap().unwrap();
        assert_eq!(answer.kind, METHOD_RETURN);
        let unit = "dev-disk-by\\x2did-scsi\\x2d0DO_Volume_x.device";
        client
            .write_all(&call(
                2,
                "StartUnit",
                "org.freedesktop.systemd1.Manager",
                unit,
            ))
            .unwrap();
        let answer = read_message(&mut reader).unwrap().unwrap();
        assert_eq!(
            (answer.kind, answer.signature.as_str()),
            (METHOD_RETURN, "o")
        );
        let job = read_string(&answer.body, &mut 0).unwrap();
        let signal = read_message(&mut reader).unwrap().unwrap();
        assert_eq!(
            (signal.kind, signal.member.as_str()),
            (SIGNAL, "JobRemoved")
        );
        assert_eq!(signal.signature, "uoss");
        let mut at = 4;
        assert_eq!(read_string(&signal.body, &mut at).unwrap(), job);
        assert_eq!(read_string(&signal.body, &mut at).unwrap(), unit);
        assert_eq!(read_string(&signal.body, &mut at).unwrap(), "done");
        assert_eq!(bus.started(), [unit]);

        client
            .write_all(&call(
                3,
                "GetUnit",
                "org.freedesktop.systemd1.Manager",
                unit,
            ))
            .unwrap();
        let answer = read_message(&mut reader).unwrap().unwrap();
        assert_eq!(answer.kind, ERROR);
    }
}
