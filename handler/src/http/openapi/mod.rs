//! The OpenAPI 3.1 document, generated from [`ENDPOINTS`] and the dataset declarations: every
//! dataset gets concrete paths with its own filter, sort and facet parameters, and a row schema.

use serde_json::{Map, Value as Json, json};

use super::ENDPOINTS;
use super::endpoints::Handler;
use crate::config::QueryLimits;
use crate::datasets::rules::EngineRules;
use crate::datasets::{Catalog, Dataset};
use crate::query::{DEFAULT_LIMIT, MAX_LIMIT};

mod schemas;

use schemas::{Body, body_schema, filter_parameters, row_schema, value_schema};

/// What the document describes: the datasets, and the rules of the engine and the query limits
/// the server enforces (so that the documented bounds are the enforced ones).
pub struct Described<'a> {
    pub catalog: &'a Catalog,
    pub engine: EngineRules,
    pub limits: &'a QueryLimits,
}

pub fn document(described: &Described<'_>) -> Json {
    let catalog = described.catalog;
    let mut paths = Map::new();
    for endpoint in ENDPOINTS {
        let per_dataset = endpoint.route.contains("{dataset}");
        let targets: Vec<Option<&Dataset>> = if per_dataset {
            catalog.iter().map(|d| Some(d.as_ref())).collect()
        } else {
            vec![None]
        };
        for dataset in targets {
            let route = match dataset {
                Some(d) => endpoint.route.replace("{dataset}", &d.name),
                None => endpoint.route.to_owned(),
            };
            let mut operation = operation(
                described,
                endpoint.function,
                endpoint.summary,
                endpoint.handler,
                dataset,
            );
            // One function may serve several methods (PUT and PATCH): ids stay unique.
            if ENDPOINTS
                .iter()
                .filter(|e| e.function == endpoint.function && e.route == endpoint.route)
                .count()
                > 1
            {
                let id = format!(
                    "{}_{}",
                    operation["operationId"].as_str().unwrap_or_default(),
                    endpoint.method.to_ascii_lowercase()
                );
                operation["operationId"] = json!(id);
            }
            let item = paths
                .entry(format!("/{route}"))
                .or_insert_with(|| json!({}));
            item[endpoint.method.to_ascii_lowercase()] = operation;
        }
    }
    let mut schemas = Map::new();
    schemas.insert("Problem".into(), problem_schema());
    schemas.insert("ImportStatus".into(), import_status_schema());
    for dataset in catalog.iter() {
        schemas.insert(schema_name(dataset), row_schema(dataset, described.engine));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Smartcache API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Datasets behind a cached HTTP API. Errors are application/problem+json.",
        },
        "servers": [{"url": "/api"}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    })
}

fn schema_name(dataset: &Dataset) -> String {
    let mut chars = dataset.name.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).into_iter();
    first.chain(chars).collect::<String>() + "Row"
}

fn schema_ref(name: &str) -> Json {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn operation(
    described: &Described<'_>,
    function: &str,
    summary: &str,
    handler: Handler,
    dataset: Option<&Dataset>,
) -> Json {
    let (engine, limits) = (described.engine, described.limits);
    let id_parameter = |d: &Dataset| json!({"name": "id", "in": "path", "required": true, "schema": value_schema(d.key_column(), true, engine)});
    let operation_id = match dataset {
        Some(d) => format!("{function}_{}", d.name),
        None => function.to_owned(),
    };
    let mut parameters = Vec::new();
    let mut ok = json!({"description": "OK", "content": {"application/json": {"schema": {}}}});
    match (handler, dataset) {
        (Handler::List, Some(d)) => {
            parameters.extend(filter_parameters(d, limits));
            parameters.push(sort_parameter(d));
            parameters.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}));
            parameters.push(json!({"name": "cursor", "in": "query", "description": "next_cursor of the previous page, opaque: only a cursor this endpoint made for the same sort is taken (400 otherwise)", "schema": {"type": "string", "minLength": 1, "maxLength": limits.max_cursor_bytes}}));
            ok["content"]["application/json"]["schema"] = json!({
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {
                    "items": {"type": "array", "items": schema_ref(&schema_name(d))},
                    "next_cursor": {"type": ["string", "null"]},
                },
            });
        }
        (Handler::Export, Some(d)) => {
            parameters.extend(filter_parameters(d, limits));
            parameters.push(sort_parameter(d));
            parameters.push(json!({"name": "format", "in": "query", "schema": {"enum": ["json", "ndjson", "csv"], "default": "json"}}));
            ok = json!({"description": "Every matching row, streamed", "content": {
                "application/json": {"schema": {"type": "array", "items": schema_ref(&schema_name(d))}},
                "application/x-ndjson": {"schema": schema_ref(&schema_name(d))},
                "text/csv": {"schema": {"type": "string"}},
            }});
        }
        (Handler::Facets, Some(d)) => {
            let columns: Vec<&str> = d
                .columns
                .iter()
                .filter(|c| c.filterable)
                .map(|c| c.name.as_str())
                .collect();
            parameters.push(json!({"name": "column", "in": "path", "required": true, "schema": {"enum": columns}}));
            parameters.extend(filter_parameters(d, limits));
            parameters.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}}));
            ok["content"]["application/json"]["schema"] = json!({
                "type": "object",
                "properties": {
                    "column": {"type": "string"},
                    "values": {"type": "array", "items": {"type": "object", "properties": {"value": {}, "count": {"type": "integer"}}}},
                },
            });
        }
        (Handler::Count, Some(d)) => {
            parameters.extend(filter_parameters(d, limits));
            ok["content"]["application/json"]["schema"] = json!({
                "type": "object",
                "required": ["count"],
                "properties": {"count": {"type": "integer", "minimum": 0}},
            });
        }
        (Handler::Item, Some(d)) => {
            parameters.push(id_parameter(d));
            ok["content"]["application/json"]["schema"] = schema_ref(&schema_name(d));
        }
        (Handler::Create | Handler::Replace | Handler::Patch, Some(d)) => {
            if !matches!(handler, Handler::Create) {
                parameters.push(id_parameter(d));
            }
            ok["content"]["application/json"]["schema"] = schema_ref(&schema_name(d));
            if matches!(handler, Handler::Create) {
                ok["description"] = json!("Created; Location names the new row");
            }
        }
        (Handler::Delete, Some(d)) => {
            parameters.push(id_parameter(d));
            ok = json!({"description": "Deleted"});
        }
        (Handler::Signup | Handler::Login, _) => {
            let credentials = json!({"type": "object", "required": ["email", "password"], "properties": {
                "email": {"type": "string", "format": "email"},
                "password": {"type": "string", "minLength": 8, "maxLength": 128},
            }});
            let mut operation =
                json!({"operationId": operation_id, "summary": summary, "responses": {}});
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": credentials}}});
            return finish(operation, handler, ok);
        }
        (Handler::ImportStart, _) => {
            let request = json!({"type": "object", "required": ["dataset", "blob"], "properties": {
                "dataset": {"enum": catalog_names(described.catalog), "description": "A declared dataset"},
                "blob": {"type": "string", "format": "uri", "pattern": "^https://[^/?#]+/[^/?#]+/[^?#]+", "description": "https://<account>.blob.core.windows.net/<container>/<blob>, with a SAS or not (plain http only on loopback, for Azurite)"},
                "mode": {"enum": ["replace", "sync"], "description": "replace every row (and every cached answer), or sync: change only the rows that differ by key, ending only the answers they change. Default: the dataset's declared mode"},
            }, "additionalProperties": false});
            let mut operation =
                json!({"operationId": operation_id, "summary": summary, "responses": {}});
            operation["requestBody"] =
                json!({"required": true, "content": {"application/json": {"schema": request}}});
            let accepted = json!({"description": "Started; Location names its status", "content": {"application/json": {"schema": schema_ref("ImportStatus")}}});
            return finish(operation, handler, accepted);
        }
        (Handler::AdminPurge, _) => {
            parameters.push(json!({"name": "dataset", "in": "query", "required": true, "schema": {"enum": catalog_names(described.catalog)}}));
        }
        (Handler::ImportStatus, _) => {
            parameters.push(
                json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}),
            );
            ok = json!({"description": "The import's progress, then its report or error", "content": {"application/json": {"schema": schema_ref("ImportStatus")}}});
        }
        (Handler::DocsAsset, _) => {
            parameters.push(json!({"name": "asset", "in": "path", "required": true, "schema": {"enum": super::docs::ASSET_NAMES}}));
            ok = json!({"description": "A script or style of the docs page", "content": {"text/javascript": {}, "text/css": {}}});
        }
        (Handler::Docs, _) => {
            ok = json!({"description": "HTML page", "content": {"text/html": {}}})
        }
        _ => {}
    }
    let problem =
        json!({"content": {"application/problem+json": {"schema": schema_ref("Problem")}}});
    let mut responses = Map::new();
    responses.insert("200".into(), ok.clone());
    if dataset.is_some() {
        for (code, description) in [
            ("400", "Invalid parameter"),
            ("404", "Unknown dataset or row"),
            (
                "503",
                "Database unavailable; for a write also: the cache could not record it (nothing \
                 written), or could not confirm it after the commit (read the row). Retry-After says when",
            ),
        ] {
            let mut response = problem.clone();
            response["description"] = json!(description);
            responses.insert(code.into(), response);
        }
    }
    if matches!(handler, Handler::Export) {
        // A stored export can be resumed: one byte range of the representation being sent.
        responses.insert("206".into(), json!({"description": "The byte range asked for (Content-Range); only while If-Range, if sent, is this representation's ETag"}));
        let mut beyond = problem.clone();
        beyond["description"] =
            json!("The range lies beyond the answer (Content-Range: bytes */length)");
        responses.insert("416".into(), beyond);
        parameters.push(json!({"name": "Range", "in": "header", "schema": {"type": "string", "example": "bytes=0-1023"}}));
        parameters.push(json!({"name": "If-Range", "in": "header", "schema": {"type": "string"}}));
    }
    let mut operation = json!({"operationId": operation_id, "summary": summary, "parameters": parameters, "responses": responses});
    let body = match handler {
        Handler::Create => Some(Body::Create),
        Handler::Replace => Some(Body::Replace),
        Handler::Patch => Some(Body::Patch),
        _ => None,
    };
    if let (Some(body), Some(d)) = (body, dataset) {
        operation["requestBody"] = json!({"required": true, "content": {"application/json": {"schema": body_schema(d, body, engine)}}});
    }
    if matches!(
        handler,
        Handler::List | Handler::Export | Handler::Facets | Handler::Count
    ) {
        operation["responses"]["414"] = json!({"description": "The path and query string are longer than MAX_URI_BYTES", "content": {"application/problem+json": {"schema": schema_ref("Problem")}}});
    }
    finish(operation, handler, ok)
}

/// The status of success, the auth and body errors, and the bearer requirement of endpoints that
/// may need a token.
fn finish(mut operation: Json, handler: Handler, ok: Json) -> Json {
    let success = match handler {
        Handler::Create | Handler::Signup => "201",
        Handler::ImportStart => "202",
        Handler::Delete => "204",
        _ => "200",
    };
    let responses = operation["responses"].as_object_mut().expect("an object");
    responses.remove("200");
    responses.insert(success.into(), ok);
    let writes = matches!(
        handler,
        Handler::Create | Handler::Replace | Handler::Patch | Handler::Delete
    );
    let problem = |description: &str| json!({"description": description, "content": {"application/problem+json": {"schema": schema_ref("Problem")}}});
    if writes
        || matches!(
            handler,
            Handler::Signup | Handler::Login | Handler::ImportStart
        )
    {
        for (code, description) in [
            ("400", "Body is not valid JSON, or not an object"),
            ("413", "Body larger than MAX_BODY_BYTES"),
            ("415", "Body is not JSON"),
            ("422", "Invalid fields, each named in invalid_params"),
        ] {
            if !matches!(handler, Handler::Delete) {
                responses.insert(code.into(), problem(description));
            }
        }
    }
    if writes
        || matches!(
            handler,
            Handler::Me
                | Handler::AdminView
                | Handler::AdminPurge
                | Handler::ImportStart
                | Handler::ImportStatus
        )
    {
        responses.insert("401".into(), problem("No valid token"));
        responses.insert("403".into(), problem("The account's role may not do this"));
    }
    if writes {
        responses.insert("409".into(), problem("A row with this key exists"));
    }
    if matches!(handler, Handler::Login) {
        responses.insert("401".into(), problem("Invalid email or password"));
        responses.insert("429".into(), problem("Too many attempts; see Retry-After"));
    }
    if matches!(handler, Handler::Signup) {
        responses.insert("409".into(), problem("Email already registered"));
        responses.insert(
            "429".into(),
            problem("Too many sign-ups from this address; see Retry-After"),
        );
    }
    if !matches!(
        handler,
        Handler::Version | Handler::OpenApi | Handler::Docs | Handler::DocsAsset
    ) && !responses.contains_key("503")
    {
        let description = match handler {
            Handler::Health => "Degraded: the database does not answer",
            Handler::Signup | Handler::Login | Handler::Me => {
                "Accounts are off (no JWT_SECRET), or the database is unavailable; Retry-After says when"
            }
            _ => {
                "The database or the cache is unavailable, or accounts are off; Retry-After says when"
            }
        };
        responses.insert("503".into(), problem(description));
    }
    if matches!(handler, Handler::ImportStart) {
        responses.insert("409".into(), problem("An import of the dataset is running"));
    }
    if matches!(handler, Handler::ImportStatus) {
        responses.insert("404".into(), problem("No such import on this instance"));
    }
    if matches!(handler, Handler::AdminPurge) {
        responses.insert("400".into(), problem("No dataset named, or an unknown one"));
    }
    if matches!(handler, Handler::DocsAsset) {
        responses.insert(
            "304".into(),
            json!({"description": "Not modified (If-None-Match)"}),
        );
        responses.insert("404".into(), problem("No such asset"));
    }
    if responses.contains_key("401") && !matches!(handler, Handler::Login) {
        operation["security"] = json!([{"bearer": []}]);
    }
    operation
}

fn sort_parameter(dataset: &Dataset) -> Json {
    let values: Vec<String> = dataset
        .columns
        .iter()
        .filter(|c| c.sortable)
        .flat_map(|c| [c.name.clone(), format!("-{}", c.name)])
        .collect();
    json!({"name": "sort", "in": "query", "description": "column, or -column for descending", "schema": {"enum": values}})
}

fn catalog_names(catalog: &Catalog) -> Vec<String> {
    catalog.names().map(str::to_owned).collect()
}

/// What `http::imports` reports about an import.
fn import_status_schema() -> Json {
    let count = json!({"type": "integer", "minimum": 0});
    json!({
        "type": "object",
        "required": ["id", "dataset", "source", "state", "started_at", "bytes_read", "rows_staged"],
        "properties": {
            "id": {"type": "string"}, "dataset": {"type": "string"},
            "source": {"type": "string", "description": "The blob's URL without its SAS"},
            "state": {"type": "string", "enum": ["running", "succeeded", "failed"]},
            "mode": {"type": "string", "enum": ["replace", "sync"]},
            "started_at": {"type": "string", "format": "date-time"},
            "finished_at": {"type": "string", "format": "date-time"},
            "bytes_total": count, "bytes_read": count, "rows_staged": count,
            "report": {"type": "object", "properties": {
                "imported": count, "rejected": count, "seconds": {"type": "number"},
                "sync": {"type": "object", "description": "What a sync changed, by key", "properties": {
                    "added": count, "changed": count, "removed": count, "unchanged": count}},
                "rows_per_second": {"type": "number"},
                "rejections": {"type": "array", "items": {"type": "object", "properties": {
                    "line": count, "reason": {"type": "string"}}}},
                "rejection_groups": {"type": "array", "description": "Every rejection counted by column and reason, largest first", "items": {"type": "object", "properties": {
                    "column": {"type": ["string", "null"]}, "reason": {"type": "string"},
                    "count": count, "first_lines": {"type": "array", "items": count}}}},
            }},
            "error": {"type": "string"},
        },
    })
}

fn problem_schema() -> Json {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details",
        "properties": {
            "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
            "detail": {"type": "string"},
            "invalid_params": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "reason": {"type": "string"}}}},
        },
    })
}
