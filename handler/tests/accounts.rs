//! Accounts over HTTP: local sign-up and login (argon2id), login limits, tokens; Firebase
//! Authentication through its real emulator; and RS256 ID-token verification with keys this test
//! generates (`openssl`) and serves from a local endpoint standing in for Google's certificate
//! URL (the only stand-in here: Google's servers are not reachable).

mod common;

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{TestApp, TestResponse};
use handler::auth::Auth;
use handler::cache::Cache;
use handler::config::Settings;
use handler::storage::{NewUser, StorageError, UserLookup, UserUpdate};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
    TestApp::header(response, name)
}

fn local_app() -> TestApp {
    TestApp::new(common::open(&common::sqlite_url()), common::catalog())
}

async fn login(app: &TestApp, email: &str, password: &str) -> TestResponse {
    app.post_json(
        "/api/auth/login",
        &json!({"email": email, "password": password}),
    )
    .await
}

/// The accounts table on every database that answers (MySQL has no `RETURNING`: its store reads
/// the account back).
async fn local_apps() -> Vec<TestApp> {
    common::sql_backends()
        .await
        .iter()
        .map(|url| TestApp::new(common::open(url), common::catalog()))
        .collect()
}

#[tokio::test]
async fn local_signup_login_and_me() {
    for app in local_apps().await {
        signup_login_and_me(&app).await;
    }
}

async fn signup_login_and_me(app: &TestApp) {
    let app = app.clone();
    let signup = app
        .post_json(
            "/api/auth/signup",
            &json!({"email": "Ada@Example.com", "password": "analytical engine", "role": "admin"}),
        )
        .await;
    assert_eq!(signup.status, 201, "{}", signup.text());
    let body = signup.json();
    assert_eq!(body["role"], "user", "a role in the body is ignored");
    assert_eq!(body["email"], "Ada@Example.com");
    assert!(body.get("password").is_none() && !signup.text().contains("analytical"));

    let again = app
        .post_json(
            "/api/auth/signup",
            &json!({"email": "ada@example.COM", "password": "something else"}),
        )
        .await;
    assert_eq!(again.status, 409, "emails are unique whatever their case");

    let token = login(&app, "ADA@example.com", "analytical engine").await;
    assert_eq!(token.status, 200, "{}", token.text());
    assert_eq!(header(&token, "cache-control"), "no-store");
    let token = token.json();
    assert_eq!(token["token_type"], "Bearer");
    assert_eq!(token["expires_in"], 600);
    let me = app
        .with_token(token["access_token"].as_str().unwrap())
        .get("/api/auth/me")
        .await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["role"], "user");
    assert_eq!(me.json()["id"], body["id"]);

    // A wrong password and an unknown email are indistinguishable.
    let wrong = login(&app, "ada@example.com", "not the password").await;
    let unknown = login(&app, "nobody@example.com", "not the password").await;
    assert_eq!((wrong.status.as_u16(), unknown.status.as_u16()), (401, 401));
    assert_eq!(wrong.body, unknown.body);
    assert!(!wrong.text().contains("not the password"));
    assert_eq!(app.get("/api/auth/me").await.status, 401);

    // Promotion returns the account as it is now; an unknown account is "not found".
    let storage = &app.state.storage;
    let id = body["id"].as_i64().unwrap();
    let promote = UserUpdate {
        role: Some("admin".into()),
        active: None,
    };
    let promoted = storage.update_user(id, promote.clone()).await.unwrap();
    assert_eq!((promoted.id, promoted.role.as_str()), (id, "admin"));
    assert_eq!(promoted.email, "Ada@Example.com");
    assert!(matches!(
        storage.update_user(id + 1000, promote).await,
        Err(StorageError::NotFound)
    ));
}

#[tokio::test]
async fn signup_checks_its_fields() {
    let app = local_app();
    for (body, field) in [
        (json!({"email": "a@b.c", "password": "short"}), "password"),
        (
            json!({"email": "a@b.c", "password": "x".repeat(129)}),
            "password",
        ),
        (
            json!({"email": "not an email", "password": "long enough"}),
            "email",
        ),
        (json!({"email": "a@b.c"}), "password"),
        (json!({"email": 5, "password": "long enough"}), "email"),
    ] {
        let response = app.post_json("/api/auth/signup", &body).await;
        assert_eq!(response.status, 422, "{body}: {}", response.text());
        assert_eq!(
            response.json()["invalid_params"][0]["name"],
            field,
            "{body}"
        );
    }
    let form = app
        .send_raw(
            "POST",
            "/api/auth/signup",
            "application/x-www-form-urlencoded",
            b"email=a".to_vec(),
        )
        .await;
    assert_eq!(form.status, 415);
}

#[tokio::test]
async fn failed_logins_are_limited_per_email_and_address_and_per_address() {
    let app = local_app().calling_from("198.51.100.20");
    let (email, _) = app.account_token("user").await; // one attempt, successful
    for attempt in 1..=handler::auth::ATTEMPTS_PER_EMAIL {
        let response = login(&app, &email, "wrong password").await;
        assert_eq!(response.status, 401, "attempt {attempt}");
    }
    let limited = login(&app, &email, common::TEST_PASSWORD).await;
    assert_eq!(
        limited.status, 429,
        "even the right password, once over the limit from this address"
    );
    let retry_after: u64 = header(&limited, "retry-after").parse().unwrap();
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    // Another email is still welcome from here.
    let (other, _) = app.account_token("user").await;
    assert_eq!(login(&app, &other, common::TEST_PASSWORD).await.status, 200);

    // Per address, whatever the emails: and a client's own X-Forwarded-For (no trusted proxy
    // in front) changes nothing, however it rotates.
    let fresh = local_app().calling_from("198.51.100.21");
    let mut statuses = Vec::new();
    for n in 0..=handler::auth::ATTEMPTS_PER_ADDRESS {
        let request = json!({"email": format!("u{n}@example.com"), "password": "wrong password"});
        let forged = format!("203.0.113.{n}");
        let response = fresh
            .send_raw_with(
                "POST",
                "/api/auth/login",
                &[
                    ("content-type", "application/json"),
                    ("x-forwarded-for", forged.as_str()),
                ],
                request.to_string().into_bytes(),
            )
            .await;
        statuses.push(response.status.as_u16());
    }
    assert!(
        statuses[..statuses.len() - 1].iter().all(|&s| s == 401),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&429));
}

/// Guessing from one address cannot lock the owner out: the owner, from another address, signs
/// in. Behind a trusted proxy, the address is the one the proxy saw.
#[tokio::test]
async fn an_attacker_cannot_lock_the_owner_out() {
    let base = local_app();
    let (email, _) = base.account_token("user").await;
    let attacker = base.calling_from("203.0.113.66");
    for _ in 0..handler::auth::ATTEMPTS_PER_EMAIL + 5 {
        let status = login(&attacker, &email, "a guess at it").await.status;
        assert!(status == 401 || status == 429, "{status}");
    }
    assert_eq!(
        login(&attacker, &email, common::TEST_PASSWORD).await.status,
        429
    );
    let owner = base.calling_from("198.51.100.5");
    assert_eq!(
        login(&owner, &email, common::TEST_PASSWORD).await.status,
        200,
        "the owner signs in from their own address"
    );

    // Behind a trusted proxy (10.0.0.1), the attacker's address is its forwarded one, and the
    // owner's forwarded address is its own.
    let mut proxied = base.clone();
    proxied.state.trusted_proxies =
        Arc::new(handler::config::TrustedProxies::parse("10.0.0.0/8").unwrap());
    let through_proxy = proxied.calling_from("10.0.0.1");
    let (victim, _) = base.account_token("user").await;
    for _ in 0..handler::auth::ATTEMPTS_PER_EMAIL {
        let status = login_forwarded(&through_proxy, &victim, "a guess", "192.0.2.66").await;
        assert_eq!(status, 401);
    }
    let status = login_forwarded(&through_proxy, &victim, common::TEST_PASSWORD, "192.0.2.66");
    assert_eq!(status.await, 429);
    let status = login_forwarded(&through_proxy, &victim, common::TEST_PASSWORD, "192.0.2.5");
    assert_eq!(status.await, 200);
}

/// A login through a proxy that says the client is `forwarded_for`.
async fn login_forwarded(app: &TestApp, email: &str, password: &str, forwarded_for: &str) -> u16 {
    let body = json!({"email": email, "password": password}).to_string();
    app.send_raw_with(
        "POST",
        "/api/auth/login",
        &[
            ("content-type", "application/json"),
            ("x-forwarded-for", forwarded_for),
        ],
        body.into_bytes(),
    )
    .await
    .status
    .as_u16()
}

/// With Redis, the attempts of one email are counted across instances.
#[tokio::test]
async fn login_limits_are_shared_through_redis() {
    let Some(redis) = common::redis_url().await else {
        return;
    };
    let storage = common::open(&common::sqlite_url());
    let prefix = common::unique_prefix();
    let instance = || {
        let cache = Cache::with_redis(&redis, &prefix, std::time::Duration::from_secs(60), 1 << 20);
        TestApp::with_cache(storage.clone(), common::catalog(), cache)
    };
    let (a, b) = (instance(), instance());
    let (email, _) = a.account_token("user").await;
    for attempt in 1..=handler::auth::ATTEMPTS_PER_EMAIL {
        let app = if attempt % 2 == 0 { &a } else { &b };
        assert_eq!(login(app, &email, "wrong password").await.status, 401);
    }
    assert_eq!(login(&a, &email, common::TEST_PASSWORD).await.status, 429);
    assert_eq!(login(&b, &email, common::TEST_PASSWORD).await.status, 429);
}

/// An app in Firebase mode: through the emulator when `emulator` is set, else verifying RS256
/// ID tokens against `certs_url`.
fn firebase_app(emulator: Option<&str>, certs_url: Option<&str>) -> TestApp {
    firebase_app_with(
        emulator,
        certs_url,
        &[("FIREBASE_ALLOW_UNVERIFIED_EMAIL", "true")],
    )
}

/// [`firebase_app`] with other settings (verified emails required unless they say otherwise).
fn firebase_app_with(
    emulator: Option<&str>,
    certs_url: Option<&str>,
    settings: &[(&str, &str)],
) -> TestApp {
    let storage = common::open(&common::sqlite_url());
    let mut vars = vec![
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef".to_owned()),
        ("AUTH_PROVIDER", "firebase".to_owned()),
        ("FIREBASE_PROJECT_ID", common::firebase::PROJECT.to_owned()),
        ("FIREBASE_API_KEY", "test-api-key".to_owned()),
    ];
    vars.extend(settings.iter().map(|(k, v)| (*k, (*v).to_owned())));
    if let Some(host) = emulator {
        vars.push(("FIREBASE_AUTH_EMULATOR_HOST", host.to_owned()));
    }
    if let Some(url) = certs_url {
        vars.push(("FIREBASE_CERTS_URL", url.to_owned()));
    }
    let settings = Settings::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    let cache = Arc::new(Cache::in_process(
        "fb",
        std::time::Duration::from_secs(60),
        1 << 20,
    ));
    let auth = Auth::from_settings(&settings, Arc::clone(&storage), Arc::clone(&cache))
        .unwrap()
        .unwrap();
    let state = handler::http::AppState::new(Arc::new(common::catalog()), storage, cache)
        .with_auth(Some(auth));
    TestApp {
        state,
        bearer: None,
        peer: None,
    }
}

/// By default a Firebase account counts only once its email is verified: signing up sends the
/// link, and neither a login nor the account's own ID token makes a row before it is followed
/// (someone registering another person's address gains nothing, not even a later promotion).
#[tokio::test]
async fn firebase_accounts_count_once_their_email_is_verified() {
    let Some(host) = common::firebase::emulator() else {
        return;
    };
    let app = firebase_app_with(Some(host), None, &[]);
    let email = format!("verify{}@example.com", std::process::id());
    let password = "firebase pw 3";
    let signup = app
        .post_json(
            "/api/auth/signup",
            &json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(signup.status, 202, "{}", signup.text());
    assert_eq!(signup.json()["verification"], "sent");
    let row = || {
        let storage = app.state.storage.clone();
        let email = email.clone();
        async move { storage.find_user(UserLookup::Email(email)).await.unwrap() }
    };
    assert!(
        row().await.is_none(),
        "no account before the email is verified"
    );

    let early = login(&app, &email, password).await;
    assert_eq!(early.status, 403, "{}", early.text());
    assert_eq!(early.content_type(), "application/problem+json");
    let signed_in = emulator_call(
        host,
        "signInWithPassword",
        json!({"email": email, "password": password, "returnSecureToken": true}),
    )
    .await;
    let id_token = signed_in["idToken"].as_str().unwrap();
    assert_eq!(
        app.with_token(id_token).get("/api/auth/me").await.status,
        403
    );
    assert!(
        row().await.is_none(),
        "an unverified ID token makes no account"
    );

    // Follow the link the emulator "sent" (it keeps the codes it would have mailed).
    let codes: serde_json::Value = reqwest::get(format!(
        "http://{host}/emulator/v1/projects/{}/oobCodes",
        common::firebase::PROJECT
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let code = codes["oobCodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["email"] == email.as_str() && c["requestType"] == "VERIFY_EMAIL")
        .and_then(|c| c["oobCode"].as_str())
        .expect("a verification code for the address")
        .to_owned();
    let verified = emulator_call(host, "update", json!({"oobCode": code})).await;
    assert_eq!(verified["emailVerified"], true, "{verified}");

    let token = login(&app, &email, password).await;
    assert_eq!(token.status, 200, "{}", token.text());
    let record = row()
        .await
        .expect("the account, made at the first verified login");
    assert_eq!(record.role, "user");
    assert!(record.firebase_uid.is_some());
}

/// A direct call to the emulator's REST API, as a client app would make.
async fn emulator_call(host: &str, method: &str, body: serde_json::Value) -> serde_json::Value {
    let url = format!("http://{host}/identitytoolkit.googleapis.com/v1/accounts:{method}?key=any");
    reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn firebase_signup_and_login_through_the_emulator() {
    let Some(host) = common::firebase::emulator() else {
        return;
    };
    let app = firebase_app(Some(host), None);
    let email = format!("fb{}@example.com", std::process::id());
    let signup = app
        .post_json(
            "/api/auth/signup",
            &json!({"email": email, "password": "firebase pw 1", "role": "admin"}),
        )
        .await;
    assert_eq!(signup.status, 201, "{}", signup.text());
    assert_eq!(signup.json()["role"], "user");
    let record = app
        .state
        .storage
        .find_user(UserLookup::Email(email.clone()))
        .await
        .unwrap()
        .unwrap();
    let uid = record
        .firebase_uid
        .clone()
        .expect("the Firebase uid is recorded");
    assert!(
        record.password_hash.is_none(),
        "Firebase holds the password"
    );
    let duplicate = app
        .post_json(
            "/api/auth/signup",
            &json!({"email": email, "password": "firebase pw 1"}),
        )
        .await;
    assert_eq!(duplicate.status, 409);

    let token = login(&app, &email, "firebase pw 1").await;
    assert_eq!(token.status, 200, "{}", token.text());
    let access = token.json()["access_token"].as_str().unwrap().to_owned();
    let me = app.with_token(&access).get("/api/auth/me").await;
    assert_eq!(me.json()["id"], record.id);
    assert_eq!(login(&app, &email, "wrong password!").await.status, 401);

    // The emulator's own (unsigned) ID token is accepted in emulator mode, as that account.
    let signed_in = emulator_call(
        host,
        "signInWithPassword",
        json!({"email": email, "password": "firebase pw 1", "returnSecureToken": true}),
    )
    .await;
    let id_token = signed_in["idToken"].as_str().unwrap();
    assert_eq!(signed_in["localId"], uid);
    let me = app.with_token(id_token).get("/api/auth/me").await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["id"], record.id);
    // ...and refused by the same server outside emulator mode.
    let production = firebase_app(None, Some("http://127.0.0.1:9/certs"));
    assert_eq!(
        production
            .with_token(id_token)
            .get("/api/auth/me")
            .await
            .status,
        401
    );
}

#[tokio::test]
async fn a_failed_database_insert_removes_the_firebase_account_it_created() {
    let Some(host) = common::firebase::emulator() else {
        return;
    };
    let app = firebase_app(Some(host), None);
    let email = format!("orphan{}@example.com", std::process::id());
    // The row exists here already (say, a local account), so the insert after Firebase fails.
    app.state
        .storage
        .create_user(NewUser {
            email: email.clone(),
            password_hash: None,
            firebase_uid: None,
            role: "user".into(),
        })
        .await
        .unwrap();
    let signup = app
        .post_json(
            "/api/auth/signup",
            &json!({"email": email, "password": "firebase pw 2"}),
        )
        .await;
    assert_eq!(signup.status, 409, "{}", signup.text());
    let after = emulator_call(
        host,
        "signInWithPassword",
        json!({"email": email, "password": "firebase pw 2"}),
    )
    .await;
    assert_eq!(after["error"]["message"], "EMAIL_NOT_FOUND", "{after}");
}

/// An RSA key and a self-signed certificate for it, made by `openssl` (a test dependency the
/// CI installs); `None` with a visible line when it is missing.
fn generate_key_pair(dir: &std::path::Path) -> Option<(Vec<u8>, String)> {
    let key = dir.join("key.pem");
    let cert = dir.join("cert.pem");
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=smartcache-test",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status();
    match status {
        Ok(s) if s.success() => Some((
            std::fs::read(key).unwrap(),
            std::fs::read_to_string(cert).unwrap(),
        )),
        _ => {
            common::skip::skipped(
                "the RS256 tests need openssl (apt-get install openssl)",
                false,
            );
            None
        }
    }
}

/// Serves `{kid: certificate}` as Google does, with a `max-age`; returns its URL.
async fn serve_certificates(certs: serde_json::Value) -> String {
    serve_certificates_with(certs, 3600, std::time::Duration::ZERO).await
}

/// [`serve_certificates`] with a `max-age` of `max_age` seconds, every answer after the first
/// taking `delay`.
async fn serve_certificates_with(
    certs: serde_json::Value,
    max_age: u64,
    delay: std::time::Duration,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cache_control = format!("public, max-age={max_age}");
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let (certs, served) = (certs.clone(), Arc::clone(&served));
            let cache_control = cache_control.clone();
            async move {
                if served.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
                    tokio::time::sleep(delay).await;
                }
                (
                    [
                        ("cache-control", cache_control),
                        ("content-type", "application/json".to_owned()),
                    ],
                    certs.to_string(),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://127.0.0.1:{port}/certs")
}

#[tokio::test]
async fn firebase_id_tokens_are_verified_and_every_bad_one_is_a_401() {
    let dir = std::env::temp_dir().join(format!("smartcache_rs256_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some((private_pem, cert_pem)) = generate_key_pair(&dir) else {
        return;
    };
    let _ = std::fs::remove_dir_all(&dir);
    let url = serve_certificates(json!({"key-1": cert_pem})).await;
    // Verified emails required, as by default.
    let app = firebase_app_with(None, Some(&url), &[]);
    let project = common::firebase::PROJECT;
    let now = chrono::Utc::now().timestamp();
    let claims = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut claims = json!({
            "iss": format!("https://securetoken.google.com/{project}"), "aud": project,
            "sub": "firebase-uid-1", "email": "rs@example.com", "email_verified": true,
            "iat": now - 10, "auth_time": now - 10, "exp": now + 3600,
        });
        change(&mut claims);
        claims
    };
    let key = EncodingKey::from_rsa_pem(&private_pem).unwrap();
    let sign = |claims: &serde_json::Value, kid: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        jsonwebtoken::encode(&header, claims, &key).unwrap()
    };

    // A valid token of an address nobody verified makes no account (a 403, not a 401: the
    // token itself is fine).
    let unverified = sign(
        &claims(&|c| {
            c["sub"] = json!("firebase-uid-2");
            c["email"] = json!("someone-else@example.com");
            c["email_verified"] = json!(false);
        }),
        "key-1",
    );
    let refused = app.with_token(&unverified).get("/api/auth/me").await;
    assert_eq!(refused.status, 403, "{}", refused.text());

    let good = sign(&claims(&|_| {}), "key-1");
    let me = app.with_token(&good).get("/api/auth/me").await;
    assert_eq!(me.status, 200, "{}", me.text());
    assert_eq!(me.json()["email"], "rs@example.com");
    assert_eq!(me.json()["role"], "user", "first seen: recorded as a user");

    let b64 = |v: &serde_json::Value| URL_SAFE_NO_PAD.encode(v.to_string());
    let (head, rest) = good.split_once('.').unwrap();
    let signature = rest.split_once('.').unwrap().1;
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("key-1".into());
        jsonwebtoken::encode(
            &header,
            &claims(&|_| {}),
            &EncodingKey::from_secret(cert_pem.as_bytes()),
        )
        .unwrap()
    };
    let rejected = [
        (
            "unsigned (alg none)",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&claims(&|_| {}))
            ),
        ),
        (
            "HS256 signed with the RS256 public key",
            hs256_with_public_key,
        ),
        (
            "expired",
            sign(&claims(&|c| c["exp"] = json!(now - 120)), "key-1"),
        ),
        (
            "issued in the future",
            sign(&claims(&|c| c["iat"] = json!(now + 600)), "key-1"),
        ),
        (
            "authenticated in the future",
            sign(&claims(&|c| c["auth_time"] = json!(now + 600)), "key-1"),
        ),
        (
            "wrong audience",
            sign(&claims(&|c| c["aud"] = json!("another-project")), "key-1"),
        ),
        (
            "wrong issuer",
            sign(
                &claims(&|c| c["iss"] = json!("https://securetoken.google.com/another")),
                "key-1",
            ),
        ),
        (
            "empty subject",
            sign(&claims(&|c| c["sub"] = json!("")), "key-1"),
        ),
        (
            "tampered payload",
            format!(
                "{head}.{}.{signature}",
                b64(&claims(&|c| c["sub"] = json!("someone-else")))
            ),
        ),
        ("unknown kid", sign(&claims(&|_| {}), "key-2")),
        (
            "malformed header",
            format!(
                "{}.{}.{signature}",
                URL_SAFE_NO_PAD.encode("{not json"),
                b64(&claims(&|_| {}))
            ),
        ),
        ("not a JWT at all", "abc.def".to_owned()),
    ];
    for (what, token) in rejected {
        let response = app.with_token(&token).get("/api/auth/me").await;
        assert_eq!(
            response.status,
            401,
            "{what} was not refused: {}",
            response.text()
        );
        assert_eq!(header(&response, "www-authenticate"), "Bearer", "{what}");
        assert!(
            !response.text().contains(&token),
            "{what}: the token is echoed"
        );
    }
}

/// Token checks never queue behind a certificate fetch: once the list has expired, the first
/// check refreshes it (here, slowly) while every other goes on with the keys it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_certificate_refresh_does_not_hold_up_token_checks() {
    let dir = std::env::temp_dir().join(format!("smartcache_rs256_slow_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some((private_pem, cert_pem)) = generate_key_pair(&dir) else {
        return;
    };
    let _ = std::fs::remove_dir_all(&dir);
    let slow = std::time::Duration::from_secs(3);
    let url = serve_certificates_with(json!({"key-1": cert_pem}), 1, slow).await;
    let app = firebase_app_with(None, Some(&url), &[]);
    let project = common::firebase::PROJECT;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": format!("https://securetoken.google.com/{project}"), "aud": project,
        "sub": "firebase-uid-slow", "email": "slow@example.com", "email_verified": true,
        "iat": now - 10, "auth_time": now - 10, "exp": now + 3600,
    });
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("key-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(&private_pem).unwrap(),
    )
    .unwrap();
    let user = app.with_token(&token);
    assert_eq!(
        user.get("/api/auth/me").await.status,
        200,
        "the first fetch"
    );
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // the list expires
    let checks: Vec<_> = (0..8)
        .map(|_| {
            let user = user.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let status = user.get("/api/auth/me").await.status;
                (status, started.elapsed())
            })
        })
        .collect();
    let mut quick = 0;
    for check in checks {
        let (status, took) = check.await.unwrap();
        assert_eq!(status, 200);
        if took < slow / 3 {
            quick += 1;
        }
    }
    assert!(
        quick >= 7,
        "only {quick} of 8 checks went on while one refreshed the list"
    );
}

/// Concurrent guesses cannot all slip under the per-account-and-address limit together: an
/// attempt counts before its password is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_are_counted_before_they_are_checked() {
    let app = local_app().calling_from("198.51.100.40");
    let (email, _) = app.account_token("user").await;
    let guesses: Vec<_> = (0..30)
        .map(|_| {
            let (app, email) = (app.clone(), email.clone());
            tokio::spawn(async move { login(&app, &email, "a guess at it").await.status })
        })
        .collect();
    let mut failed = 0;
    for guess in guesses {
        match guess.await.unwrap().as_u16() {
            401 => failed += 1,
            429 => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(failed as u64, handler::auth::ATTEMPTS_PER_EMAIL);
}

/// Cache misses use at most `MAX_DATABASE_READS` connections; logins and writes need none of
/// those: with every read slot taken, a miss waits and is a 503, a login still works.
#[tokio::test]
async fn logins_and_writes_keep_a_connection_whatever_the_reads() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let app = TestApp::new(storage, catalog);
    let (email, _) = app.account_token("admin").await;
    let mut starved = app.clone();
    starved.state = starved
        .state
        .clone()
        .with_limits(handler::config::RequestLimits {
            database_reads: Some(0),
            ..Default::default()
        });
    let miss = starved.get("/api/movies?year=1999").await;
    assert_eq!(miss.status, 503, "{}", miss.text());
    assert!(!header(&miss, "retry-after").is_empty());
    let token = login(&starved, &email, common::TEST_PASSWORD).await;
    assert_eq!(token.status, 200, "{}", token.text());
    let access = token.json()["access_token"].as_str().unwrap().to_owned();
    let write = starved
        .with_token(&access)
        .send_json("PATCH", "/api/movies/595", &json!({"runtime": 111}))
        .await;
    assert_eq!(write.status, 200, "{}", write.text());
}
