//! The DigitalOcean client against a scripted server on loopback: every
//! fault the issue names (429 with reset, 500, 503, connection reset,
//! timeout), pagination and its loop guard, action polling, and errors
//! that are not retried.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use builder::digitalocean::{ApiError, Client, RetryPolicy};
use serde_json::json;
use site_lab::http::{self, Response};

/// One scripted answer.
#[derive(Clone)]
enum Answer {
    Json {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Close the connection without answering (a reset).
    Hang,
    /// Answer only after this long (a timeout, for the client).
    Slow(Duration, Box<Answer>),
}

fn ok(body: serde_json::Value) -> Answer {
    Answer::Json {
        status: 200,
        headers: vec![],
        body: body.to_string(),
    }
}

fn status(code: u16, body: serde_json::Value) -> Answer {
    Answer::Json {
        status: code,
        headers: vec![],
        body: body.to_string(),
    }
}

/// Serves the answers in order, one per request; records request lines.
struct Scripted {
    base: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start(answers: Vec<Answer>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        thread::spawn(move || {
            // Answers go out in accept order, each on its own thread, so a
            // slow one does not hold up the client's retry.
            for answer in answers {
                let Ok((stream, _)) = listener.accept() else {
                    return;
                };
                let log = log.clone();
                thread::spawn(move || serve(stream, answer, &log));
            }
        });
        Scripted { base, requests }
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, answer: Answer, log: &Mutex<Vec<String>>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let Ok(Some(request)) = http::read_request(&mut BufReader::new(stream)) else {
        return;
    };
    log.lock().unwrap().push(format!(
        "{} {} {}",
        request.method, request.target, request.version
    ));
    let mut answer = answer;
    if let Answer::Slow(delay, inner) = answer {
        thread::sleep(delay);
        answer = *inner;
    }
    match answer {
        Answer::Hang => drop(writer),
        Answer::Json {
            status,
            headers,
            body,
        } => {
            let mut response = Response::new(status)
                .with_header("content-type", "application/json")
                .with_header("connection", "close")
                .with_body(body);
            for (k, v) in &headers {
                response = response.with_header(k, v);
            }
            let _ = response.write_to(&mut writer, true);
        }
        Answer::Slow(..) => unreachable!(),
    }
}

fn client(base: &str) -> Client {
    let policy = RetryPolicy {
        attempts: 4,
        first_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        deadline: Duration::from_secs(10),
        request_timeout: Duration::from_millis(500),
    };
    Client::new(base, "test-token", policy).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    builder::net::runtime().unwrap()
}

#[test]
fn transient_faults_are_retried_until_an_answer() {
    let reset = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 1;
    let limited = Answer::Json {
        status: 429,
        headers: vec![("ratelimit-reset".into(), reset.to_string())],
        body: json!({"id": "too_many_requests", "message": "API Rate limit exceeded."}).to_string(),
    };
    let server = Scripted::start(vec![
        limited,
        status(500, json!({"id": "server_error", "message": "oops"})),
        Answer::Hang,
        ok(json!({"account": {"status": "active"}})),
    ]);
    let answer = runtime()
        .block_on(client(&server.base).get("/v2/account"))
        .unwrap();
    assert_eq!(answer["account"]["status"], "active");
    assert_eq!(server.requests().len(), 4);
    assert!(server
        .requests()
        .iter()
        .all(|r| r == "GET /v2/account HTTP/1.1"));
}

#[test]
fn a_timeout_and_a_503_are_retried() {
    let server = Scripted::start(vec![
        Answer::Slow(Duration::from_secs(2), Box::new(ok(json!({})))),
        status(503, json!({"id": "service_unavailable", "message": "busy"})),
        ok(json!({"account": {"status": "active"}})),
    ]);
    let answer = runtime()
        .block_on(client(&server.base).get("/v2/account"))
        .unwrap();
    assert_eq!(answer["account"]["status"], "active");
}

#[test]
fn persistent_failure_gives_up_with_a_clear_message() {
    let server = Scripted::start(vec![status(500, json!({"id": "e", "message": "m"})); 4]);
    let err = runtime()
        .block_on(client(&server.base).get("/v2/account"))
        .unwrap_err();
    assert!(
        matches!(&err, ApiError::GaveUp { gave_up, .. } if gave_up.attempts == 4),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with("GET /v2/account: no usable answer after 4 attempts in ")
            && text.contains("the last: 500 Internal Server Error (m)"),
        "{text}"
    );
    // Advice to resume belongs to `launch`, not to every caller.
    assert!(!text.contains("run the command again"), "{text}");
}

#[test]
fn an_unresolvable_host_is_not_retried_and_says_so_once() {
    // A label over 63 characters: the resolver refuses the name itself,
    // so no query leaves this machine.
    let host = format!("{}.invalid", "a".repeat(70));
    let client = client(&format!("http://{host}"));
    // Not retried: the one request counted below, not a clock.
    let err = runtime().block_on(client.get("/v2/account")).unwrap_err();
    assert!(matches!(err, ApiError::Unreachable { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot resolve the host name `{host}`")),
        "{text}"
    );
    assert!(text.contains("DNS"), "{text}");
    assert!(!text.contains("error sending request"), "{text}");
    assert!(!text.contains("run the command again"), "{text}");
    assert_eq!(client.sent().requests, 1);
}

#[test]
fn a_refused_connection_is_retried_then_named() {
    // Bound and never listened on: a connection is refused, and no other
    // process can take the port while the test holds it.
    let unserved = tokio::net::TcpSocket::new_v4().unwrap();
    unserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = unserved.local_addr().unwrap().port();
    let client = client(&format!("http://127.0.0.1:{port}"));
    let err = runtime().block_on(client.get("/v2/account")).unwrap_err();
    assert_eq!(client.sent().requests, 4);
    let text = err.to_string();
    assert!(
        text.contains(&format!("the last: connection refused by 127.0.0.1:{port}")),
        "{text}"
    );
    assert_eq!(text.matches("refused").count(), 1, "{text}");
    assert!(!text.contains("error sending request"), "{text}");
}

#[test]
fn requests_stay_within_the_rate_limit() {
    let server = Scripted::start(vec![ok(json!({"account": {}})); 6]);
    let client = client(&server.base).with_rate_limit(3, Duration::from_millis(400));
    let started = std::time::Instant::now();
    runtime().block_on(async {
        for _ in 0..6 {
            client.get("/v2/account").await.unwrap();
        }
    });
    // Three fit in the first 400 ms window, the next three wait for it.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.requests().len(), 6);
}

#[test]
fn refusals_are_not_retried_and_say_what_to_do() {
    let server = Scripted::start(vec![status(
        401,
        json!({"id": "Unauthorized", "message": "Unable to authenticate you."}),
    )]);
    let err = runtime()
        .block_on(client(&server.base).get("/v2/account"))
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(401));
    let text = err.to_string();
    assert!(text.contains("check the token"), "{text}");
    assert!(
        text.starts_with(
            "DigitalOcean refused GET /v2/account: 401 Unauthorized: Unable to authenticate you."
        ),
        "{text}"
    );
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn a_failed_create_is_not_sent_twice() {
    // A 500 on POST may have created the thing: never repeat it here.
    let server = Scripted::start(vec![
        status(500, json!({"id": "server_error", "message": "oops"})),
        ok(json!({})),
    ]);
    let err = runtime()
        .block_on(client(&server.base).post("/v2/tags", &json!({"name": "x"})))
        .unwrap_err();
    assert_eq!(err.status().map(|s| s.as_u16()), Some(500));
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn malformed_answers_are_errors() {
    let server = Scripted::start(vec![Answer::Json {
        status: 200,
        headers: vec![],
        body: "{not json".into(),
    }]);
    let err = runtime()
        .block_on(client(&server.base).get("/v2/account"))
        .unwrap_err();
    assert!(matches!(err, ApiError::Malformed { .. }), "{err}");
}

#[test]
fn listings_follow_pages_and_refuse_loops() {
    let page = |items: Vec<u32>, next: Option<&str>| {
        let links = match next {
            Some(n) => json!({"pages": {"next": format!("https://api.digitalocean.com{n}")}}),
            None => json!({}),
        };
        ok(
            json!({"tags": items.iter().map(|i| json!({"name": format!("t{i}")})).collect::<Vec<_>>(), "links": links, "meta": {"total": 3}}),
        )
    };
    let server = Scripted::start(vec![
        page(vec![1, 2], Some("/v2/tags?page=2&per_page=2")),
        page(vec![3], None),
    ]);
    let tags = runtime()
        .block_on(client(&server.base).list("/v2/tags", "tags"))
        .unwrap();
    assert_eq!(tags.len(), 3);
    assert_eq!(
        server.requests()[1],
        "GET /v2/tags?page=2&per_page=2 HTTP/1.1"
    );

    let looping = Scripted::start(vec![
        page(vec![1], Some("/v2/tags?page=2")),
        page(vec![2], Some("/v2/tags?page=2")),
    ]);
    let err = runtime()
        .block_on(client(&looping.base).list("/v2/tags", "tags"))
        .unwrap_err();
    assert!(err.to_string().contains("pagination loops"), "{err}");
}

#[test]
fn actions_are_polled_to_completion_or_error() {
    let action =
        |status: &str| ok(json!({"action": {"id": 7, "status": status, "type": "attach_volume"}}));
    let server = Scripted::start(vec![
        action("in-progress"),
        action("in-progress"),
        action("completed"),
    ]);
    let done = runtime()
        .block_on(client(&server.base).wait_action(
            7,
            Duration::from_secs(5),
            Duration::from_millis(10),
        ))
        .unwrap();
    assert_eq!(done["status"], "completed");
    let failing = Scripted::start(vec![action("errored")]);
    let err = runtime()
        .block_on(client(&failing.base).wait_action(
            7,
            Duration::from_secs(5),
            Duration::from_millis(10),
        ))
        .unwrap_err();
    assert!(
        err.to_string().contains("action 7 (attach_volume) errored"),
        "{err}"
    );
}
