use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

use super::*;

#[test]
fn locations_name_their_account_and_never_show_the_sas() {
    let azure = BlobLocation::parse(
        "https://acct.blob.core.windows.net/data/flights.csv.gz?sv=2021-08-06&sig=c2VjcmV0",
    )
    .unwrap();
    assert_eq!(azure.account, "acct");
    assert!(azure.has_sas);
    assert_eq!(
        azure.display,
        "https://acct.blob.core.windows.net/data/flights.csv.gz"
    );
    assert_eq!(azure.file_name(), "flights.csv.gz");
    let azurite =
        BlobLocation::parse("http://127.0.0.1:10000/devstoreaccount1/data/movies.csv").unwrap();
    assert_eq!(azurite.account, "devstoreaccount1");
    assert!(!azurite.has_sas);
    for bad in [
        "ftp://acct.blob.core.windows.net/c/b",
        "https://acct.blob.core.windows.net/only-container",
        "http://127.0.0.1:10000/devstoreaccount1/container",
        "not a url",
    ] {
        assert!(BlobLocation::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn connection_strings_give_the_account_and_its_key() {
    let (account, key) = account_key(
        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5cw==;\
         BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;",
    )
    .unwrap();
    assert_eq!(
        (account.as_str(), key.as_slice()),
        ("devstoreaccount1", &b"keys"[..])
    );
    assert!(account_key("AccountName=x").is_err());
    let error = account_key("AccountName=x;AccountKey=not base64!").unwrap_err();
    assert!(!error.to_string().contains("not base64!"), "{error}");
}

/// Each field in its documented slot: an upload (length and type) and a resumed read
/// (If-Match, x-ms-range), with the query parameters sorted by name.
#[test]
fn shared_key_strings_to_sign_put_each_field_in_its_slot() {
    let date = ("x-ms-date", "Mon, 23 Nov 2026 00:00:00 GMT");
    let version = ("x-ms-version", API_VERSION);
    let upload = string_to_sign(
        "PUT",
        &StandardHeaders {
            content_length: Some(12),
            content_type: Some("text/csv"),
            if_match: None,
        },
        &[version, ("x-ms-blob-type", "BlockBlob"), date],
        "devstoreaccount1",
        &Url::parse("http://127.0.0.1:10000/devstoreaccount1/c/b.csv?timeout=30&comp=x").unwrap(),
    );
    assert_eq!(
        upload,
        "PUT\n\n\n12\n\ntext/csv\n\n\n\n\n\n\n\
         x-ms-blob-type:BlockBlob\nx-ms-date:Mon, 23 Nov 2026 00:00:00 GMT\n\
         x-ms-version:2021-08-06\n/devstoreaccount1/devstoreaccount1/c/b.csv\ncomp:x\ntimeout:30"
    );
    let resumed = string_to_sign(
        "GET",
        &StandardHeaders {
            content_length: Some(0),
            content_type: None,
            if_match: Some("\"0x8D\""),
        },
        &[date, ("x-ms-range", "bytes=100-"), version],
        "acct",
        &Url::parse("https://acct.blob.core.windows.net/data/flights.csv").unwrap(),
    );
    assert_eq!(
        resumed,
        "GET\n\n\n\n\n\n\n\n\"0x8D\"\n\n\n\n\
         x-ms-date:Mon, 23 Nov 2026 00:00:00 GMT\nx-ms-range:bytes=100-\n\
         x-ms-version:2021-08-06\n/acct/data/flights.csv"
    );
    // The signature is HMAC-SHA256 of that string under the key, base64.
    let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
    mac.update(resumed.as_bytes());
    assert_eq!(
        shared_key_signature(
            b"key",
            "GET",
            &StandardHeaders {
                content_length: Some(0),
                content_type: None,
                if_match: Some("\"0x8D\""),
            },
            &[date, ("x-ms-range", "bytes=100-"), version],
            "acct",
            &Url::parse("https://acct.blob.core.windows.net/data/flights.csv").unwrap(),
        ),
        STANDARD.encode(mac.finalize().into_bytes())
    );
}

#[test]
fn keys_and_tokens_go_only_to_their_own_endpoints() {
    let azurite = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5cw==;\
                   BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";
    let cloud = "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=a2V5cw==;EndpointSuffix=core.windows.net";
    let auth = |url: &str, connection: Option<&str>, forced: Option<&str>| {
        BlobAuth::for_location(&BlobLocation::parse(url).unwrap(), connection, forced)
    };
    assert!(matches!(
        auth(
            "http://127.0.0.1:10000/devstoreaccount1/c/b.csv",
            Some(azurite),
            None
        ),
        Ok(BlobAuth::SharedKey { .. })
    ));
    assert!(matches!(
        auth(
            "https://acct.blob.core.windows.net/c/b.csv",
            Some(cloud),
            None
        ),
        Ok(BlobAuth::SharedKey { .. })
    ));
    // Another host with the same account name gets no signature, nor a token.
    for url in [
        "https://acct.blob.evil.example/c/b.csv",
        "https://evil.example/acct/c/b.csv",
    ] {
        assert!(auth(url, Some(cloud), None).is_err(), "{url}");
        assert!(auth(url, None, None).is_err(), "{url}");
    }
    assert!(matches!(
        auth("https://acct.blob.core.windows.net/c/b.csv", None, None),
        Ok(BlobAuth::Identity(_))
    ));
    // A SAS needs nothing else; plain http only on loopback.
    assert!(matches!(
        auth(
            "https://acct.blob.evil.example/c/b.csv?sv=1&sig=x",
            None,
            None
        ),
        Ok(BlobAuth::UrlOnly)
    ));
    assert!(BlobLocation::parse("http://acct.blob.core.windows.net/c/b.csv").is_err());
}

/// A version check is a HEAD signed as a HEAD (the verb is the first line of what is signed):
/// no If-Match, no range, the date and version headers, the blob as the resource.
#[test]
fn a_head_is_signed_with_its_own_verb() {
    let date = ("x-ms-date", "Mon, 23 Nov 2026 00:00:00 GMT");
    let version = ("x-ms-version", API_VERSION);
    let head = string_to_sign(
        "HEAD",
        &StandardHeaders::default(),
        &[date, version],
        "acct",
        &Url::parse("https://acct.blob.core.windows.net/data/flights.csv.gz").unwrap(),
    );
    assert_eq!(
        head,
        "HEAD\n\n\n\n\n\n\n\n\n\n\n\n\
         x-ms-date:Mon, 23 Nov 2026 00:00:00 GMT\nx-ms-version:2021-08-06\n\
         /acct/data/flights.csv.gz"
    );
}

/// The request `version()` sends, as built: a HEAD whose Shared Key signature is that of a HEAD
/// with the headers it carries; with a SAS, the URL alone and no Authorization header.
#[tokio::test]
async fn version_requests_are_heads_signed_as_heads() {
    let url = "http://127.0.0.1:10000/devstoreaccount1/data/movies.csv";
    let location = BlobLocation::parse(url).unwrap();
    let auth = BlobAuth::SharedKey {
        account: "devstoreaccount1".into(),
        key: b"key".to_vec().into(),
    };
    let reader = BlobReader::new(location.clone(), auth).unwrap();
    let request = reader
        .request(reqwest::Method::HEAD, None, None)
        .await
        .unwrap();
    assert_eq!(request.method(), reqwest::Method::HEAD);
    assert_eq!(request.url().as_str(), url);
    let header = |name: &str| request.headers()[name].to_str().unwrap().to_owned();
    let date = header("x-ms-date");
    assert_eq!(header("x-ms-version"), API_VERSION);
    assert!(request.headers().get("if-match").is_none());
    assert!(request.headers().get("x-ms-range").is_none());
    let signed = string_to_sign(
        "HEAD",
        &StandardHeaders::default(),
        &[("x-ms-date", &date), ("x-ms-version", API_VERSION)],
        "devstoreaccount1",
        &location.url,
    );
    assert!(signed.starts_with("HEAD\n"), "{signed}");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"key").unwrap();
    mac.update(signed.as_bytes());
    let expected = format!(
        "SharedKey devstoreaccount1:{}",
        STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(header("authorization"), expected);

    let with_sas = "https://acct.blob.core.windows.net/data/movies.csv?sv=2021-08-06&sig=c2VjcmV0";
    let reader =
        BlobReader::new(BlobLocation::parse(with_sas).unwrap(), BlobAuth::UrlOnly).unwrap();
    let request = reader
        .request(reqwest::Method::HEAD, None, None)
        .await
        .unwrap();
    assert_eq!(request.method(), reqwest::Method::HEAD);
    assert_eq!(request.url().as_str(), with_sas);
    assert!(request.headers().get("authorization").is_none());
}
