//! Content codings of cached answers: brotli is made once per entry, after the first request that
//! asks for it (which gets gzip meanwhile), then served as stored bytes with its own ETag, in
//! ranges too; `Accept-Encoding` weights choose; small answers are not worth a brotli copy.

mod common;

use std::io::Read as _;
use std::time::Duration;

use common::{TestApp, TestResponse};

fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
    TestApp::header(response, name)
}

/// Asks with `accept` until the answer comes in `coding` (the copy is made off the request).
async fn until_coded(app: &TestApp, uri: &str, accept: &str, coding: &str) -> TestResponse {
    for _ in 0..100 {
        let response = app.get_with(uri, &[("accept-encoding", accept)]).await;
        assert_eq!(response.status, 200);
        if header(&response, "content-encoding") == coding {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{uri} never came as {coding}");
}

fn unbrotli(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(bytes, 4096)
        .read_to_end(&mut out)
        .expect("a whole brotli stream");
    out
}

#[tokio::test]
async fn a_page_is_sent_in_brotli_once_made_with_its_own_validator_and_ranges() {
    let app = TestApp::movies_on_sqlite().await;
    let uri = "/api/movies?genres=drama&limit=100";
    let plain = app.get(uri).await;
    assert_eq!(plain.status, 200);
    assert_eq!(header(&plain, "content-encoding"), "");

    // What a browser sends. The first asks start the brotli copy and get gzip meanwhile.
    let browser = "gzip, deflate, br, zstd";
    let first = app.get_with(uri, &[("accept-encoding", browser)]).await;
    assert!(
        ["gzip", "br"].contains(&header(&first, "content-encoding")),
        "{:?}",
        first.headers
    );
    let brotli = until_coded(&app, uri, browser, "br").await;
    assert_eq!(header(&brotli, "x-cache"), "HIT");
    assert_eq!(header(&brotli, "vary"), "accept-encoding");
    assert_eq!(unbrotli(&brotli.body), plain.body.as_ref());
    let gzipped = app.get_with(uri, &[("accept-encoding", "gzip")]).await;
    assert!(
        brotli.body.len() < gzipped.body.len(),
        "brotli {} bytes, gzip {}",
        brotli.body.len(),
        gzipped.body.len()
    );
    let etag = header(&brotli, "etag");
    assert!(etag.ends_with("-br\""), "{etag}");
    assert_ne!(etag, header(&gzipped, "etag"));
    assert_ne!(etag, header(&plain, "etag"));

    // Weights decide: gzip preferred over brotli gets gzip; brotli refused gets gzip.
    for accept in ["br;q=0.5, gzip", "gzip, br;q=0"] {
        let response = app.get_with(uri, &[("accept-encoding", accept)]).await;
        assert_eq!(header(&response, "content-encoding"), "gzip", "{accept}");
    }
    // Its validator revalidates, as every representation's does.
    let revalidated = app
        .get_with(
            uri,
            &[("accept-encoding", browser), ("if-none-match", etag)],
        )
        .await;
    assert_eq!(revalidated.status, 304);
    assert_eq!(
        header(&revalidated, "etag"),
        etag,
        "a 304 names the representation a 200 would send"
    );

    // Ranges of the brotli bytes: the middle, and If-Range with its own ETag.
    let n = brotli.body.len();
    let range = format!("bytes={}-{}", n / 2, n - 1);
    let part = app
        .get_with(
            uri,
            &[
                ("accept-encoding", browser),
                ("range", &range),
                ("if-range", etag),
            ],
        )
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(header(&part, "content-encoding"), "br");
    assert_eq!(part.body.as_ref(), &brotli.body[n / 2..]);
    // The gzip ETag does not resume a brotli download: the whole brotli answer.
    let other = app
        .get_with(
            uri,
            &[
                ("accept-encoding", browser),
                ("range", &range),
                ("if-range", header(&gzipped, "etag")),
            ],
        )
        .await;
    assert_eq!(other.status, 200);
    assert_eq!(other.body, brotli.body);
}

#[tokio::test]
async fn a_write_ends_the_brotli_copy_with_its_answer() {
    let app = TestApp::movies_on_sqlite().await;
    let admin = app.as_admin().await;
    let uri = "/api/movies?genres=drama&limit=100";
    let before = until_coded(&app, uri, "br", "br").await;
    let first: serde_json::Value = serde_json::from_slice(&unbrotli(&before.body)).unwrap();
    let id = first["items"][0]["id"].as_i64().unwrap();
    let changed = admin
        .send_json(
            "PATCH",
            &format!("/api/movies/{id}"),
            &serde_json::json!({"title": "Brotli is made again"}),
        )
        .await;
    assert_eq!(changed.status, 200, "{:?}", changed.body);
    let after = until_coded(&app, uri, "br", "br").await;
    let page: serde_json::Value = serde_json::from_slice(&unbrotli(&after.body)).unwrap();
    assert_eq!(page["items"][0]["title"], "Brotli is made again");
    assert_ne!(header(&after, "etag"), header(&before, "etag"));
}

#[tokio::test]
async fn small_answers_stay_in_gzip() {
    let app = TestApp::movies_on_sqlite().await;
    let uri = "/api/movies?genres=drama&limit=1";
    for _ in 0..10 {
        let response = app.get_with(uri, &[("accept-encoding", "br, gzip")]).await;
        assert_eq!(response.status, 200);
        assert!(response.body.len() < 1024);
        assert_eq!(header(&response, "content-encoding"), "gzip");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
