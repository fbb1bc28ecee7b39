//! The DigitalOcean client through Prism (proxy mode, `--errors`) in
//! front of the stateful fake: requests and answers both stay exact to the
//! official specification. The harness `launch`, `status` and `destroy`
//! will be tested in (issue 5).

mod support;

use std::time::Duration;

use builder::digitalocean::{Client, RetryPolicy};
use serde_json::json;
use support::do_fake::FakeDo;
use support::prism::{self, Prism};

#[test]
fn the_client_and_the_fake_agree_with_the_spec() {
    if let Some(reason) = prism::skip_reason() {
        // The spec may legitimately be absent; Prism never is in CI.
        return if reason.contains("Prism") {
            support::skip(&reason)
        } else {
            eprintln!("{reason}")
        };
    }
    let fake = FakeDo::start();
    let prism = Prism::start(&fake.base);
    let policy = RetryPolicy {
        attempts: 2,
        request_timeout: Duration::from_secs(20),
        ..RetryPolicy::digitalocean()
    };
    let client = Client::new(&prism.base, "test-token", policy).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let account = client.get("/v2/account").await.unwrap();
        assert_eq!(account["account"]["status"], "active");
        client
            .post("/v2/tags", &json!({"name": "site:example-com"}))
            .await
            .unwrap();
        let tags = client.list("/v2/tags", "tags").await.unwrap();
        assert_eq!(tags.len(), 1);
        assert_eq!(tags[0]["name"], "site:example-com");
        // A request the spec forbids (an action id must be an integer) is
        // refused by Prism itself and never reaches the fake.
        let err = client.get("/v2/actions/not-a-number").await.unwrap_err();
        let status = err.status().map(|s| s.as_u16());
        assert!(matches!(status, Some(400 | 422)), "{err}");
    });
    assert_eq!(
        fake.calls(),
        [
            "GET /v2/account",
            "POST /v2/tags",
            "GET /v2/tags?per_page=200"
        ]
    );
}
