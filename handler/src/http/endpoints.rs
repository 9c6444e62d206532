//! [`ENDPOINTS`]: the single list of what is served. The router is built from it, the OpenAPI
//! document is generated from it, and a test checks it against `functions/*/function.json`.

use axum::routing::{MethodFilter, MethodRouter};

use super::{AppState, admin, auth, data, docs, imports, meta, write};

/// One served endpoint: the Azure function that declares it, and its route as written in that
/// function's `function.json` (relative to the `api` prefix).
#[derive(Debug, Clone, Copy)]
pub struct Endpoint {
    pub function: &'static str,
    pub method: &'static str,
    pub route: &'static str,
    pub summary: &'static str,
    /// The function's `authLevel`: `function` for admin-only endpoints, so that in Azure the host
    /// demands a function key as well as the admin token.
    pub auth_level: &'static str,
    pub(super) handler: Handler,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Handler {
    Health,
    Version,
    OpenApi,
    Docs,
    DocsAsset,
    List,
    Export,
    Facets,
    Count,
    Item,
    AdminView,
    AdminPurge,
    ImportStart,
    ImportStatus,
    Create,
    Replace,
    Patch,
    Delete,
    Signup,
    Login,
    Me,
}

/// Functions that the host invokes by POSTing JSON to `/<FunctionName>` (non-HTTP triggers).
pub const INVOCATIONS: &[&str] = &["WarmCache", "SyncDatasets"];

pub const ENDPOINTS: &[Endpoint] = &[
    Endpoint {
        function: "Health",
        method: "GET",
        route: "health",
        summary: "Liveness and dependency checks",
        auth_level: "anonymous",
        handler: Handler::Health,
    },
    Endpoint {
        function: "Version",
        method: "GET",
        route: "version",
        summary: "Name, version and git commit",
        auth_level: "anonymous",
        handler: Handler::Version,
    },
    Endpoint {
        function: "OpenApi",
        method: "GET",
        route: "openapi.json",
        summary: "This API as an OpenAPI 3.1 document",
        auth_level: "anonymous",
        handler: Handler::OpenApi,
    },
    Endpoint {
        function: "Docs",
        method: "GET",
        route: "docs",
        summary: "Interactive documentation: Swagger UI on this API (works offline)",
        auth_level: "anonymous",
        handler: Handler::Docs,
    },
    Endpoint {
        function: "DocsAssets",
        method: "GET",
        route: "docs/{asset}",
        summary: "The documentation page's scripts and styles",
        auth_level: "anonymous",
        handler: Handler::DocsAsset,
    },
    Endpoint {
        function: "ListItems",
        method: "GET",
        route: "{dataset}",
        summary: "A page of rows, filtered and sorted",
        auth_level: "anonymous",
        handler: Handler::List,
    },
    Endpoint {
        function: "ExportItems",
        method: "GET",
        route: "{dataset}/export",
        summary: "Every matching row, streamed",
        auth_level: "anonymous",
        handler: Handler::Export,
    },
    Endpoint {
        function: "Facets",
        method: "GET",
        route: "{dataset}/facets/{column}",
        summary: "Rows per value of a column",
        auth_level: "anonymous",
        handler: Handler::Facets,
    },
    Endpoint {
        function: "CountItems",
        method: "GET",
        route: "{dataset}/count",
        summary: "How many rows pass the filters",
        auth_level: "anonymous",
        handler: Handler::Count,
    },
    Endpoint {
        function: "AdminCache",
        method: "GET",
        route: "admin/cache",
        summary: "Cache statistics and hot keys (admin)",
        auth_level: "function",
        handler: Handler::AdminView,
    },
    Endpoint {
        function: "AdminCache",
        method: "DELETE",
        route: "admin/cache",
        summary: "Purge a dataset's cached answers (admin)",
        auth_level: "function",
        handler: Handler::AdminPurge,
    },
    Endpoint {
        function: "AdminImports",
        method: "POST",
        route: "admin/imports",
        summary: "Start an import from Azure Blob Storage (admin)",
        auth_level: "function",
        handler: Handler::ImportStart,
    },
    Endpoint {
        function: "AdminImportStatus",
        method: "GET",
        route: "admin/imports/{id}",
        summary: "Progress and summary of an import (admin)",
        auth_level: "function",
        handler: Handler::ImportStatus,
    },
    Endpoint {
        function: "Signup",
        method: "POST",
        route: "auth/signup",
        summary: "Create an account (role: user)",
        auth_level: "anonymous",
        handler: Handler::Signup,
    },
    Endpoint {
        function: "Login",
        method: "POST",
        route: "auth/login",
        summary: "Exchange email and password for an access token",
        auth_level: "anonymous",
        handler: Handler::Login,
    },
    Endpoint {
        function: "Me",
        method: "GET",
        route: "auth/me",
        summary: "The signed-in caller",
        auth_level: "anonymous",
        handler: Handler::Me,
    },
    Endpoint {
        function: "CreateItem",
        method: "POST",
        route: "{dataset}",
        summary: "Create a row (admin unless the dataset says otherwise)",
        auth_level: "function",
        handler: Handler::Create,
    },
    Endpoint {
        function: "UpdateItem",
        method: "PUT",
        route: "{dataset}/{id}",
        summary: "Replace a row",
        auth_level: "function",
        handler: Handler::Replace,
    },
    Endpoint {
        function: "UpdateItem",
        method: "PATCH",
        route: "{dataset}/{id}",
        summary: "Change some columns of a row",
        auth_level: "function",
        handler: Handler::Patch,
    },
    Endpoint {
        function: "DeleteItem",
        method: "DELETE",
        route: "{dataset}/{id}",
        summary: "Delete a row",
        auth_level: "function",
        handler: Handler::Delete,
    },
    Endpoint {
        function: "GetItem",
        method: "GET",
        route: "{dataset}/{id}",
        summary: "One row by key",
        auth_level: "anonymous",
        handler: Handler::Item,
    },
];

impl Handler {
    pub fn method_router(self, filter: MethodFilter) -> MethodRouter<AppState> {
        match self {
            Handler::Health => MethodRouter::new().on(filter, meta::health),
            Handler::Version => MethodRouter::new().on(filter, meta::version),
            Handler::OpenApi => MethodRouter::new().on(filter, meta::openapi),
            Handler::Docs => MethodRouter::new().on(filter, docs::page),
            Handler::DocsAsset => MethodRouter::new().on(filter, docs::asset),
            Handler::List => MethodRouter::new().on(filter, data::list),
            Handler::Export => MethodRouter::new().on(filter, data::export),
            Handler::Facets => MethodRouter::new().on(filter, data::facets),
            Handler::Count => MethodRouter::new().on(filter, data::count),
            Handler::Item => MethodRouter::new().on(filter, data::item),
            Handler::AdminView => MethodRouter::new().on(filter, admin::view),
            Handler::AdminPurge => MethodRouter::new().on(filter, admin::purge),
            Handler::ImportStart => MethodRouter::new().on(filter, imports::start),
            Handler::ImportStatus => MethodRouter::new().on(filter, imports::status),
            Handler::Create => MethodRouter::new().on(filter, write::create),
            Handler::Replace => MethodRouter::new().on(filter, write::replace),
            Handler::Patch => MethodRouter::new().on(filter, write::patch),
            Handler::Delete => MethodRouter::new().on(filter, write::delete),
            Handler::Signup => MethodRouter::new().on(filter, auth::signup),
            Handler::Login => MethodRouter::new().on(filter, auth::login),
            Handler::Me => MethodRouter::new().on(filter, auth::me),
        }
    }
}

pub fn method_filter(method: &str) -> MethodFilter {
    match method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "PUT" => MethodFilter::PUT,
        "PATCH" => MethodFilter::PATCH,
        "DELETE" => MethodFilter::DELETE,
        other => panic!("ENDPOINTS uses an unsupported method {other}"),
    }
}
