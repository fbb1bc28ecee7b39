//! Helper servers run as child processes (Prism, moto). Each binds port 0
//! itself and says which port it got; waiting for that line is waiting for
//! the real event. (Picking a free port here and passing it on races with
//! every other process on the machine between our probe and its bind.)

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// A started helper: its process, the port it announced, and everything
/// it printed so far. Dropping it ends the child's process group.
pub struct Announced {
    child: Child,
    pub port: u16,
    output: Output,
}

impl Announced {
    /// `http://127.0.0.1:PORT`: every helper here listens on loopback.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the child printed so far (stdout and stderr interleaved), for
    /// failure messages.
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// Its process id, which is also its process group's.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// `command` run inside the network namespace `netns` (a name under
/// /run/netns): `ip netns exec` enters it and execs the program, so the
/// child keeps its process id.
pub fn in_netns(netns: &str, command: &Command) -> Command {
    let mut wrapped = Command::new("ip");
    wrapped
        .args(["netns", "exec", netns])
        .arg(command.get_program())
        .args(command.get_args());
    for (key, value) in command.get_envs() {
        match value {
            Some(value) => wrapped.env(key, value),
            None => wrapped.env_remove(key),
        };
    }
    if let Some(dir) = command.get_current_dir() {
        wrapped.current_dir(dir);
    }
    wrapped
}

impl Drop for Announced {
    fn drop(&mut self) {
        super::end_group(&mut self.child);
    }
}

/// What a child printed, filled by the thread that drains its pipe.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<String>>);

impl Output {
    fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Starts `command` in its own process group with stdout and stderr on one
/// pipe, and waits until it prints `marker` followed by a port (such as
/// `"listening on http://127.0.0.1:"`). Fails the test if the child exits
/// or stays silent for `within` instead. The pipe is drained for the
/// child's whole life, so a chatty server never blocks on it.
pub fn spawn_announcing(
    mut command: Command,
    what: &str,
    marker: &'static str,
    within: Duration,
) -> Announced {
    let (reader, writer) = std::io::pipe().expect("a pipe for the child's output");
    command
        .stdin(Stdio::null())
        .stdout(writer.try_clone().expect("a second write end"))
        .stderr(writer);
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    // The command holds the pipe's write ends: without dropping it, the
    // pipe would never close and an exited child would look silent.
    drop(command);

    let output = Output::default();
    let (port_tx, port_rx) = mpsc::channel();
    let log = output.clone();
    std::thread::spawn(move || {
        let mut port_tx = Some(port_tx);
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if let Some(port) = port_after(&line, marker) {
                if let Some(tx) = port_tx.take() {
                    let _ = tx.send(port);
                }
            }
            let mut log = log.0.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
        // Dropping the sender here tells the waiter the child has gone.
    });

    let mut announced = Announced {
        child,
        port: 0,
        output,
    };
    match port_rx.recv_timeout(within) {
        Ok(port) => announced.port = port,
        // Dropping `announced` in the unwinding ends the child.
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "{what} did not say it was listening within {within:?}:\n{}",
                announced.output()
            );
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let status = announced.child.wait();
            panic!(
                "{what} exited ({status:?}) before listening:\n{}",
                announced.output()
            );
        }
    }
    announced
}

/// The port in `line` right after `marker`, if any (colour codes after
/// the digits are ignored).
fn port_after(line: &str, marker: &str) -> Option<u16> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|port| *port != 0)
}
