use serde_json::json;

use super::*;

fn code(api: &Api, method: &str, params: Value) -> Option<u32> {
    api.check(method, &params).err().map(|e| e.code)
}

#[test]
fn answers_like_the_server() {
    let Some(api) = load_for_tests() else { return };
    assert!(api.commands().count() > 500);
    let ok = |method: &str, params: Value| {
        api.check(method, &params)
            .unwrap_or_else(|e| panic!("{method} {params}: {e}"))
    };
    ok("ping", json!([[], {"version": "2.251"}]));
    ok(
        "host_add/1",
        json!([["n1.lab.example.org"], {"random": true, "version": "2.257"}]),
    );
    ok(
        "dnsrecord_add",
        json!([["lab.example.org.", "n1"], {"arecord": "198.18.0.10"}]),
    );
    // ipalib's Str converts numbers to text, as the real server does.
    ok(
        "host_add",
        json!([["n1.lab.example.org"], {"description": 5}]),
    );
    assert_eq!(code(&api, "no_such_command", json!([[], {}])), Some(905));
    assert_eq!(code(&api, "ping/2", json!([[], {}])), Some(905));
    let e = api
        .check("host_add", &json!([["n1"], {"bogus": 1}]))
        .unwrap_err();
    assert_eq!(
        (e.code, e.message.as_str()),
        (3005, "Unknown option: bogus")
    );
    assert_eq!(code(&api, "host_add", json!([[], {}])), Some(3007));
    assert_eq!(
        code(&api, "ca_add", json!([["etcd"], {}])),
        Some(3007),
        "ipacasubjectdn is required"
    );
    assert_eq!(code(&api, "cert_request", json!([[], {}])), Some(3007));
    // A list for a single value, a boolean for text, text for a flag.
    assert_eq!(
        code(
            &api,
            "host_add",
            json!([["n1"], {"description": ["a", "b"]}])
        ),
        Some(3008)
    );
    assert_eq!(
        code(&api, "host_add", json!([["n1"], {"description": true}])),
        Some(3008)
    );
    assert_eq!(
        code(&api, "host_add", json!([["n1"], {"random": "yes"}])),
        Some(3008)
    );
    assert_eq!(
        code(&api, "dnszone_add", json!([["z."], {"dnsttl": "ten"}])),
        Some(3008)
    );
    assert_eq!(
        code(&api, "dnszone_add", json!([["z."], {"dnsttl": true}])),
        Some(3008)
    );
    assert_eq!(
        code(
            &api,
            "caacl_add",
            json!([["acl"], {"hostcategory": "some"}])
        ),
        Some(3009)
    );
    assert_eq!(
        code(
            &api,
            "dnsrecord_add",
            json!([["z.", "n"], {"arecord": "not-an-ip"}])
        ),
        Some(3009)
    );
    assert_eq!(code(&api, "host_add", json!([["a", "b"], {}])), Some(3004));
    assert_eq!(
        code(&api, "ping", json!([[], {"version": "3.0"}])),
        Some(901)
    );
    assert_eq!(
        code(&api, "ping", json!([[], {"version": "two"}])),
        Some(901)
    );
    assert_eq!(code(&api, "ping", json!({})), Some(909));
    assert_eq!(code(&api, "ping", json!([[]])), Some(909));
    assert_eq!(code(&api, "ping", json!([{}, {}])), Some(909));
}

#[test]
fn parses_params_and_defaults() {
    let Some(api) = load_for_tests() else { return };
    let add = api.command("cert_request").unwrap();
    let cacn = add.param("cacn").unwrap();
    assert!(!cacn.required && cacn.autofill);
    assert_eq!(cacn.default.as_deref(), Some("u'ipa'"));
    let checked = api
        .validate("cert_request", &json!([["csr"], {"principal": "host/a@B"}]))
        .err();
    // Not a CSR: the conversion fails like the server's (4301).
    assert_eq!(checked.map(|e| e.code), Some(4301));
    let acl = api.command("caacl_add").unwrap();
    assert_eq!(
        acl.param("hostcategory").unwrap().values.as_deref(),
        Some(&["all".to_owned()][..])
    );
    let segment = api.command("topologysegment_add").unwrap();
    assert!(segment
        .param("iparepltoposegmentleftnode")
        .unwrap()
        .must_be_sent());
    assert!(!segment
        .param("iparepltoposegmentdirection")
        .unwrap()
        .must_be_sent());
}
