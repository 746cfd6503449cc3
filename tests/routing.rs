//! Route matching through the real gateway: 404/405, specificity, priority,
//! host and method matching, disabled routes, rewrites and header rules.

mod common;
use common::*;

fn config(up: &TestUpstream, other: &TestUpstream) -> String {
    format!(
        r#"upstreams:
  - name: main
    url: "{main}"
  - name: other
    url: "{other}"
routes:
  - id: catch-all
    path: "/*"
    upstream: other
  - id: users
    path: "/api/users/*"
    upstream: main
  - id: me
    path: "/api/users/me"
    upstream: other
  - id: items-get
    path: "/items"
    methods: [GET]
    upstream: main
  - id: items-post
    path: "/items"
    methods: [POST]
    upstream: other
  - id: host-only
    path: "/hosted/*"
    host: "*.example.com"
    upstream: other
  - id: glob
    path: "/shops/*/orders"
    upstream: main
  - id: boosted
    path: "/promo/*"
    priority: 10
    upstream: main
  - id: promo-exact
    path: "/promo/x"
    upstream: other
  - id: disabled
    path: "/off"
    enabled: false
    upstream: main
  - id: strip
    path: "/svc/*"
    stripPrefix: true
    upstream: main
  - id: rewrite
    path: "/v1/*"
    rewrite: "/internal/v2"
    upstream: main
    requestHeaders:
      add: {{ X-Added: "yes" }}
      remove: [X-Remove-Me]
    responseHeaders:
      add: {{ X-Served-By: flexgate }}
      remove: [X-Secret]
"#,
        main = up.url(),
        other = other.url()
    )
}

fn only_api_config(up: &TestUpstream) -> String {
    format!(
        "upstreams:\n  - name: main\n    url: \"{}\"\nroutes:\n  - path: \"/api/*\"\n    methods: [GET, DELETE]\n    upstream: main\n  - path: /exact\n    upstream: main\n",
        up.url()
    )
}

#[test]
fn unknown_path_is_404_json_and_wrong_method_is_405_with_allow() {
    let up = TestUpstream::start("main", Behavior::Ok);
    let gw = Gateway::start("", &only_api_config(&up));
    let r = request(gw.port, "GET", "/nothing/here", &[], b"");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/json"));
    let body = r.json();
    assert_eq!(body["error"], "no_route");
    assert_eq!(body["requestId"].as_str(), r.header("x-request-id"));

    let r = request(gw.port, "POST", "/api/things", &[], b"x");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, DELETE"));
    assert_eq!(r.json()["error"], "method_not_allowed");
    assert_eq!(up.hits(), 0, "refused requests never reach the upstream");

    let r = request(gw.port, "GET", "/exact", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(request(gw.port, "GET", "/exact/more", &[], b"").status, 404);
}

#[test]
fn most_specific_route_wins_with_priority_override() {
    let main = TestUpstream::start("main", Behavior::Ok);
    let other = TestUpstream::start("other", Behavior::Ok);
    let gw = Gateway::start("", &config(&main, &other));
    let via = |path: &str, headers: &[(&str, &str)]| {
        let r = request(gw.port, "GET", path, headers, b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        r.header("x-upstream").unwrap().to_string()
    };
    assert_eq!(via("/api/users/42", &[]), "main");
    assert_eq!(via("/api/users", &[]), "main");
    assert_eq!(via("/api/users/me", &[]), "other", "exact beats prefix");
    assert_eq!(via("/somewhere", &[]), "other", "catch-all");
    assert_eq!(via("/shops/7/orders", &[]), "main", "glob segment");
    assert_eq!(
        via("/shops/7/orders/1", &[]),
        "other",
        "glob does not match deeper paths"
    );
    assert_eq!(via("/promo/x", &[]), "main", "priority beats exactness");
    assert_eq!(via("/off", &[]), "other", "disabled route is ignored");
}

#[test]
fn host_and_method_matching() {
    let main = TestUpstream::start("main", Behavior::Ok);
    let other = TestUpstream::start("other", Behavior::Ok);
    let gw = Gateway::start("", &config(&main, &other));
    let mut c = Client::connect(gw.port);
    let r = c.request("GET", "/items", &[], b"").unwrap();
    assert_eq!(r.header("x-upstream"), Some("main"));
    let r = c.request("POST", "/items", &[], b"{}").unwrap();
    assert_eq!(r.header("x-upstream"), Some("other"));
    let r = c.request("PUT", "/items", &[], b"{}").unwrap();
    // PUT is not listed on /items, so the catch-all "/*" (which allows every method) takes it.
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-upstream"), Some("other"));

    let raw_host = |host: &str| {
        raw(
            gw.port,
            format!("GET /hosted/a HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
        )
        .unwrap()
    };
    assert_eq!(
        raw_host("shop.example.com:3000").header("x-upstream"),
        Some("other")
    );
    main.clear();
    other.clear();
    // Host does not match: falls to the catch-all (other), never the host route's rules.
    assert_eq!(raw_host("example.org").status, 200);
}

#[test]
fn strip_prefix_rewrite_and_header_rules() {
    let main = TestUpstream::start(
        "main",
        Behavior::Headers(vec![("X-Secret".into(), "s3cr3t".into())]),
    );
    let other = TestUpstream::start("other", Behavior::Ok);
    let gw = Gateway::start("", &config(&main, &other));

    let r = request(gw.port, "GET", "/svc/orders/9?x=1", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(main.last().path, "/orders/9?x=1");
    let r = request(gw.port, "GET", "/svc", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(main.last().path, "/");

    let r = request(
        gw.port,
        "GET",
        "/v1/users?id=3",
        &[("X-Remove-Me", "1"), ("X-Keep", "1")],
        b"",
    );
    assert_eq!(r.status, 200);
    let seen = main.last();
    assert_eq!(seen.path, "/internal/v2/users?id=3");
    assert_eq!(seen.header("x-added"), Some("yes"));
    assert_eq!(seen.header("x-remove-me"), None);
    assert_eq!(seen.header("x-keep"), Some("1"));
    assert_eq!(r.header("x-served-by"), Some("flexgate"));
    assert_eq!(r.header("x-secret"), None);
}
