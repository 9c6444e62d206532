//! The `lambda` feature: API Gateway and ALB events, parsed by `lambda_http` as the Lambda runtime
//! would hand them over, answered by the same router. (`cargo test -p handler --features lambda
//! --test lambda`; the Lambda runtime itself cannot run here.)
#![cfg(feature = "lambda")]

mod common;

use lambda_http::IntoResponse as _;
use tower::ServiceExt as _;

/// An API Gateway HTTP API (payload 2.0) event for `GET /api/movies/595?x=1`.
const HTTP_API_EVENT: &str = r#"{
  "version": "2.0", "routeKey": "$default", "rawPath": "/api/movies/595", "rawQueryString": "x=1",
  "headers": {"accept": "application/json", "host": "abc.execute-api.eu-west-1.amazonaws.com"},
  "queryStringParameters": {"x": "1"},
  "requestContext": {"accountId": "123456789012", "apiId": "abc", "domainName": "abc.execute-api.eu-west-1.amazonaws.com",
    "domainPrefix": "abc", "http": {"method": "GET", "path": "/api/movies/595", "protocol": "HTTP/1.1",
    "sourceIp": "203.0.113.7", "userAgent": "test"}, "requestId": "id", "routeKey": "$default",
    "stage": "$default", "time": "23/Nov/2026:02:00:00 +0000", "timeEpoch": 1795399200000},
  "isBase64Encoded": false
}"#;

/// An Application Load Balancer event for `GET /api/movies?genres=drama&limit=2`.
const ALB_EVENT: &str = r#"{
  "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/t/1"}},
  "httpMethod": "GET", "path": "/api/movies", "queryStringParameters": {"genres": "drama", "limit": "2"},
  "headers": {"accept": "application/json", "host": "alb.example"}, "body": "", "isBase64Encoded": false
}"#;

#[tokio::test]
async fn lambda_events_are_answered_by_the_router() {
    let catalog = common::catalog();
    let storage = common::open(&common::sqlite_url());
    common::import_movies(storage.as_ref(), &catalog).await;
    let app = common::TestApp::new(storage, catalog);
    let router = handler::lambda::router(app.state.clone());

    let request = lambda_http::request::from_str(HTTP_API_EVENT).expect("an HTTP API event");
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    // Converted as lambda_http converts it for the runtime.
    let response = response.into_response().await;
    let body: serde_json::Value = match response.body() {
        lambda_http::Body::Text(text) => serde_json::from_str(text).unwrap(),
        lambda_http::Body::Binary(bytes) => serde_json::from_slice(bytes).unwrap(),
        lambda_http::Body::Empty => panic!("an empty body"),
        _ => panic!("an unexpected body"),
    };
    assert_eq!(body["id"], 595);

    let request = lambda_http::request::from_str(ALB_EVENT).expect("an ALB event");
    let response = router.oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let response = response.into_response().await;
    let text = match response.body() {
        lambda_http::Body::Text(text) => text.clone(),
        lambda_http::Body::Binary(bytes) => String::from_utf8(bytes.clone()).unwrap(),
        _ => String::new(),
    };
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
}
