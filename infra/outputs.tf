# Names and endpoints only: no key, password or connection string.

output "resource_group" {
  description = "The resource group holding everything."
  value       = azurerm_resource_group.main.name
}

output "function_app_name" {
  description = "The function app (for az functionapp commands)."
  value       = azurerm_linux_function_app.main.name
}

output "api_url" {
  description = "Base URL of the API."
  value       = "https://${azurerm_linux_function_app.main.default_hostname}/api"
}

output "package_url" {
  description = "Where package/build.py's zip is uploaded; the app runs from it."
  value       = local.package_url
}

output "datasets_container_url" {
  description = "Upload CSV files here and import them with POST /api/admin/imports."
  value       = "${azurerm_storage_account.main.primary_blob_endpoint}${azurerm_storage_container.datasets.name}"
}

output "app_identity_name" {
  description = "The identity to make a database user of (see README: CREATE USER ... FROM EXTERNAL PROVIDER)."
  value       = azurerm_user_assigned_identity.app.name
}

output "app_identity_client_id" {
  description = "Client id of the app's identity."
  value       = azurerm_user_assigned_identity.app.client_id
}

output "sql_server_fqdn" {
  description = "Azure SQL server host."
  value       = azurerm_mssql_server.main.fully_qualified_domain_name
}

output "sql_database" {
  description = "Azure SQL database name."
  value       = azurerm_mssql_database.main.name
}

output "redis_host" {
  description = "Azure Cache for Redis host (TLS port 6380)."
  value       = azurerm_redis_cache.main.hostname
}

output "key_vault_uri" {
  description = "Key Vault holding the JWT secret."
  value       = azurerm_key_vault.main.vault_uri
}
