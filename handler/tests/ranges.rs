//! Resumable downloads: byte ranges of a stored export, in both representations (plain and
//! gzipped), first, middle and last; `If-Range` with the current ETag resumes, with an ETag from
//! before a write gets the whole new answer; a range beyond the end is a 416. Over HTTP, a stored
//! export is sent with its `Content-Length`.

mod common;

use common::{TestApp, TestResponse};
use serde_json::json;

fn header<'a>(response: &'a TestResponse, name: &str) -> &'a str {
    TestApp::header(response, name)
}

#[tokio::test]
async fn a_stored_export_is_served_in_ranges_of_either_representation() {
    let app = TestApp::movies_on_sqlite().await;
    let uri = "/api/movies/export";
    let whole = app.get(uri).await;
    assert_eq!(whole.status, 200);
    // Stored once the last byte is sent; then served from the stored bytes.
    for _ in 0..50 {
        if header(&app.get(uri).await, "x-cache") == "HIT" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let plain = app.get(uri).await;
    assert_eq!(header(&plain, "x-cache"), "HIT");
    assert_eq!(header(&plain, "accept-ranges"), "bytes");
    let len = plain.body.len();
    assert!(len > 1_000_000, "the full export: {len} bytes");
    let gzipped = app.get_with(uri, &[("accept-encoding", "gzip")]).await;
    assert_eq!(header(&gzipped, "content-encoding"), "gzip");
    assert_ne!(
        header(&gzipped, "etag"),
        header(&plain, "etag"),
        "each representation has its own validator"
    );

    for (response, encoding) in [(&plain, None), (&gzipped, Some("gzip"))] {
        let body = &response.body;
        let n = body.len();
        let etag = header(response, "etag");
        let mut asks = vec![];
        if let Some(encoding) = encoding {
            asks.push(("accept-encoding", encoding));
        }
        for (range, start, end) in [
            ("bytes=0-99".to_owned(), 0, 99),
            (
                format!("bytes={}-{}", n / 2, n / 2 + 4095),
                n / 2,
                n / 2 + 4095,
            ),
            ("bytes=-100".to_owned(), n - 100, n - 1),
            (format!("bytes={}-", n - 10), n - 10, n - 1),
        ] {
            let mut headers = asks.clone();
            headers.push(("range", &range));
            headers.push(("if-range", etag));
            let part = app.get_with(uri, &headers).await;
            assert_eq!(part.status, 206, "{range} {encoding:?}");
            assert_eq!(
                header(&part, "content-range"),
                format!("bytes {start}-{end}/{n}"),
                "{range}"
            );
            assert_eq!(&part.body[..], &body[start..=end], "{range} {encoding:?}");
            assert_eq!(header(&part, "content-encoding"), encoding.unwrap_or(""));
        }
        let mut beyond = asks.clone();
        let past = format!("bytes={n}-");
        beyond.push(("range", &past));
        let refused = app.get_with(uri, &beyond).await;
        assert_eq!(refused.status, 416);
        assert_eq!(refused.content_type(), "application/problem+json");
        assert_eq!(header(&refused, "content-range"), format!("bytes */{n}"));
    }

    // The other representation's validator, or one from before a write: the whole answer.
    let crossed = app
        .get_with(
            uri,
            &[
                ("range", "bytes=0-99"),
                ("if-range", header(&gzipped, "etag")),
            ],
        )
        .await;
    assert_eq!((crossed.status.as_u16(), crossed.body.len()), (200, len));
    let admin = app.as_admin().await;
    let patched = admin
        .send_json(
            "PATCH",
            "/api/movies/595",
            &json!({"title": "Renamed for ranges"}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text());
    let changed = app
        .get_with(
            uri,
            &[
                ("range", "bytes=0-99"),
                ("if-range", header(&plain, "etag")),
            ],
        )
        .await;
    assert_eq!(changed.status, 200, "the old validator no longer matches");
    assert_ne!(header(&changed, "etag"), header(&plain, "etag"));
    assert!(String::from_utf8_lossy(&changed.body).contains("Renamed for ranges"));
}

/// Over HTTP, a stored export (held by the responses sending it) is sent with its length, in
/// either representation, not as a chunked stream: a download shows its progress and a client
/// knows where to resume.
#[tokio::test]
async fn a_stored_export_is_sent_with_its_length() {
    let database = common::served::movies_db().await;
    let served = common::served::serve(&database, &[], std::process::Stdio::null()).await;
    handler::tls::install_provider();
    let client = reqwest::Client::new();
    let url = served.url("/api/movies/export");
    for encoding in ["identity", "gzip"] {
        let mut hit = None;
        for _ in 0..100 {
            let response = client
                .get(&url)
                .header("accept-encoding", encoding)
                .send()
                .await
                .unwrap();
            if response.headers()["x-cache"] == "HIT" {
                hit = Some(response);
                break;
            }
            response.bytes().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let response = hit.expect("the export is stored");
        let headers = response.headers().clone();
        assert!(
            headers.get("transfer-encoding").is_none(),
            "{encoding}: {headers:?}"
        );
        let length: usize = headers["content-length"].to_str().unwrap().parse().unwrap();
        let body = response.bytes().await.unwrap();
        assert_eq!(length, body.len(), "{encoding}");
        assert!(
            length > 1_000_000,
            "{encoding}: the full export, {length} bytes"
        );
    }
}
