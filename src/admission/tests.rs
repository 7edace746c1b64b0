use super::*;

fn config() -> crate::Config {
    let mut cfg = crate::Config::default();
    cfg.server.allowed_hosts = vec!["gw.lan".into(), "box:9000".into()];
    cfg.server.cors_allow_origins = vec!["tauri://localhost".into()];
    cfg
}

fn policy() -> AccessPolicy {
    AccessPolicy::new(&config(), &["10.1.2.3:5555".parse().unwrap()])
}

fn tokens() -> Tokens {
    Tokens {
        server: Some("srv".into()),
        clients: vec![("desk".into(), "cli".into())],
    }
}

fn req(pairs: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::builder()
        .method("POST")
        .uri("/v1/chat/completions");
    for (k, v) in pairs {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

#[test]
fn constant_time_eq() {
    assert!(ct_eq(b"secret", b"secret"));
    assert!(!ct_eq(b"secret", b"secreT"));
    assert!(!ct_eq(b"secret", b"secret2"));
    assert!(!ct_eq(b"", b"x"));
    assert!(ct_eq(b"", b""));
}

#[test]
fn bearer_and_api_key() {
    let t = tokens();
    let mut h = HeaderMap::new();
    assert!(t.check(&h).is_none());
    h.insert("authorization", HeaderValue::from_static("Bearer srv"));
    assert_eq!(t.check(&h), Some(Caller::Server));
    h.insert("authorization", HeaderValue::from_static("bearer wrong"));
    assert!(t.check(&h).is_none());
    h.clear();
    h.insert("x-api-key", HeaderValue::from_static(" cli "));
    assert_eq!(t.check(&h), Some(Caller::Client("desk")));
    assert_eq!(
        Tokens::default().check(&HeaderMap::new()),
        Some(Caller::Open)
    );
}

#[test]
fn debug_shows_no_token() {
    let t = Tokens {
        server: Some("s3cr3t-server".into()),
        clients: vec![("desk".into(), "s3cr3t-client".into())],
    };
    let s = format!("{t:?}");
    assert!(!s.contains("s3cr3t"), "{s}");
    assert!(s.contains("desk"), "{s}");
}

#[test]
fn hosts() {
    let p = policy();
    for ok in [
        "localhost",
        "LOCALHOST:8080",
        "127.0.0.1:1",
        "[::1]:80",
        "[::1]",
        "gw.lan:1234",
    ] {
        assert!(p.host_str_allowed(ok), "{ok}");
    }
    assert!(p.host_str_allowed("10.1.2.3:5555"), "the bound address");
    assert!(p.host_str_allowed("box:9000"));
    for bad in [
        "evil.com",
        "localhost.evil.com",
        "127.0.0.2",
        "[::2]:80",
        "box:9001x",
    ] {
        assert!(!p.host_str_allowed(bad), "{bad}");
    }
}

#[test]
fn loopback_origins() {
    for ok in [
        "http://localhost",
        "http://localhost:3000",
        "https://LOCALHOST:8443",
        "http://127.0.0.1:5173",
        "http://127.9.8.7",
        "http://[::1]:8080",
    ] {
        assert!(is_loopback_origin(ok), "{ok}");
    }
    for bad in [
        "null",
        "https://evil.example",
        "http://localhost.evil.example",
        "http://127.0.0.1.evil.example",
        "http://evil.example#localhost",
        "ftp://localhost",
        "http://localhost/path",
        "http://localhost:3000x",
        "http://128.0.0.1",
        "http://[::2]",
        "tauri://localhost",
    ] {
        assert!(!is_loopback_origin(bad), "{bad}");
    }
}

#[test]
fn the_origin_rule() {
    let p = policy();
    let admitted = |o: &str| p.origin_admitted(req(&[("origin", o)]).headers());
    assert!(p.origin_admitted(req(&[]).headers()), "no Origin");
    assert!(admitted("http://localhost:3000"));
    assert!(admitted("tauri://localhost"), "listed");
    assert!(!admitted("https://evil.example"));
    assert!(!admitted("null"), "sandboxed frames are hostile");
    let mut cfg = config();
    cfg.server.cors_allow_origins = vec!["*".into()];
    let any = AccessPolicy::new(&cfg, &[]);
    assert!(any.origin_admitted(req(&[("origin", "https://else.example")]).headers()));
    assert!(
        !any.origin_admitted(req(&[("origin", "null")]).headers()),
        "\"*\" means any site, and null is none"
    );
    cfg.server.cors_allow_origins = vec!["null".into()];
    let null = AccessPolicy::new(&cfg, &[]);
    assert!(null.origin_admitted(req(&[("origin", "null")]).headers()));
}

#[test]
fn preflight_and_decorate() {
    let p = policy();
    let pre = |o: &str| {
        let r = Request::builder()
            .method("OPTIONS")
            .header("origin", o)
            .header("access-control-request-method", "POST")
            .body(())
            .unwrap();
        p.preflight(&r).unwrap()
    };
    let r = pre("tauri://localhost");
    assert_eq!(r.status(), 204);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "tauri://localhost"
    );
    let r = pre("https://evil.com");
    assert_eq!(r.status(), 403);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let plain = Request::builder().method("OPTIONS").body(()).unwrap();
    assert!(p.preflight(&plain).is_none());
    let mut out = HeaderMap::new();
    p.decorate(
        Some(HeaderValue::from_static("tauri://localhost")),
        &mut out,
    );
    assert_eq!(out["access-control-allow-origin"], "tauri://localhost");
}

#[test]
fn admit_in_order() {
    let a = Admission {
        access: policy(),
        tokens: tokens(),
        front_only: Vec::new(),
    };
    let status = |r: Result<Caller<'_>, Refusal>| match r {
        Ok(_) => 200,
        Err(e) => e.into_response::<String>(Dialect::OpenAi).status().as_u16(),
    };
    assert_eq!(status(a.admit(&req(&[("host", "evil.com")]))), 421);
    assert_eq!(
        status(a.admit(&req(&[
            ("host", "localhost"),
            ("origin", "https://evil.example")
        ]))),
        403,
        "a cross-site Origin is refused even with a good token",
    );
    assert_eq!(status(a.admit(&req(&[("host", "localhost")]))), 401);
    assert_eq!(
        a.admit(&req(&[
            ("host", "localhost"),
            ("authorization", "Bearer cli")
        ]))
        .unwrap(),
        Caller::Client("desk")
    );
    let metrics = Request::get("/metrics").body(()).unwrap();
    assert_eq!(
        a.admit(&metrics).unwrap(),
        Caller::Open,
        "no token off /v1/"
    );
    let open = Admission {
        access: policy(),
        tokens: Tokens::default(),
        front_only: Vec::new(),
    };
    let worker_port = Admission {
        access: policy(),
        tokens: tokens(),
        front_only: vec!["desk".into()],
    };
    let desk = req(&[("host", "localhost"), ("authorization", "Bearer cli")]);
    assert_eq!(
        status(worker_port.admit(&desk)),
        403,
        "a limited client is refused where its limits are not counted"
    );
    let cross = req(&[
        ("origin", "https://evil.example"),
        ("content-type", "text/plain"),
    ]);
    assert_eq!(status(open.admit(&cross)), 403, "no-token mode too");
}

#[test]
fn tokens_travel_in_a_sealed_memfd() {
    use std::os::fd::AsRawFd;
    let t = tokens();
    let fd = t.to_memfd().unwrap();
    assert_eq!(Tokens::from_memfd(&fd).unwrap(), t);
    // Read twice through the same descriptor: the shared offset never moves.
    assert_eq!(Tokens::from_memfd(&fd).unwrap(), t);
    let mut f = std::fs::File::from(fd.try_clone().unwrap());
    assert!(
        std::io::Write::write_all(&mut f, b"x").is_err(),
        "no one holding the descriptor can change it"
    );
    // An unsealed memfd is refused.
    let raw =
        nix::sys::memfd::memfd_create(c"t", nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC).unwrap();
    assert!(Tokens::from_memfd(&raw).is_err());
    assert!(fd.as_raw_fd() >= 0);
}

#[test]
fn env_names_and_from_env() {
    let mut cfg = crate::Config::default();
    cfg.server.auth_token_env = "GATEWAY_TEST_ADM_SRV".into();
    cfg.clients.push(crate::config::ClientConfig {
        name: "desk".into(),
        token_env: "GATEWAY_TEST_ADM_CLI".into(),
        max_concurrency: 0,
        ..Default::default()
    });
    std::env::set_var("GATEWAY_TEST_ADM_SRV", "s1");
    std::env::set_var("GATEWAY_TEST_ADM_CLI", "c1");
    let t = Tokens::from_env(&cfg);
    assert_eq!(t.server.as_deref(), Some("s1"));
    assert_eq!(t.clients, vec![("desk".to_string(), "c1".to_string())]);
    let names: Vec<_> = Tokens::env_names(&cfg).collect();
    assert_eq!(names, ["GATEWAY_TEST_ADM_SRV", "GATEWAY_TEST_ADM_CLI"]);
}
