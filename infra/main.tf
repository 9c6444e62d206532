# One environment for the Smartcache handler: an Elastic Premium Linux Function App running the
# custom handler from a zip in Blob Storage, Azure SQL with Entra ID only, Azure Cache for Redis
# with access keys disabled, Key Vault for the JWT secret, Application Insights, and one
# user-assigned identity with exactly the roles the handler needs. No key or password of these
# services is created: the app authenticates to each with its identity.

data "azurerm_client_config" "current" {}

resource "random_string" "suffix" {
  length  = 5
  upper   = false
  special = false
}

locals {
  base = "${var.name}${random_string.suffix.result}"
  tags = merge({ app = "smartcache" }, var.tags)
  # Each range as SQL firewall start and end addresses.
  operator_ranges = {
    for r in var.allowed_ip_ranges : r => {
      start = cidrhost(r, 0)
      end   = cidrhost(r, pow(2, 32 - tonumber(split("/", r)[1])) - 1)
    }
  }
  package_url = "${azurerm_storage_account.main.primary_blob_endpoint}${azurerm_storage_container.deployments.name}/smartcache-functions.zip"
}

resource "azurerm_resource_group" "main" {
  name     = "rg-${local.base}"
  location = var.location
  tags     = local.tags
}

resource "azurerm_user_assigned_identity" "app" {
  name                = "id-${local.base}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  tags                = local.tags
}

# ---- network: the app's outbound traffic enters SQL, Storage and Key Vault through service
# endpoints of its own subnet, which their firewalls allow ------------------------------------

resource "azurerm_virtual_network" "main" {
  name                = "vnet-${local.base}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  address_space       = ["10.40.0.0/16"]
  tags                = local.tags
}

resource "azurerm_subnet" "app" {
  name                 = "snet-app"
  resource_group_name  = azurerm_resource_group.main.name
  virtual_network_name = azurerm_virtual_network.main.name
  address_prefixes     = ["10.40.1.0/24"]
  service_endpoints    = ["Microsoft.Storage", "Microsoft.Sql", "Microsoft.KeyVault"]
  delegation {
    name = "functions"
    service_delegation {
      name    = "Microsoft.Web/serverFarms"
      actions = ["Microsoft.Network/virtualNetworks/subnets/action"]
    }
  }
}

resource "azurerm_network_security_group" "app" {
  name                = "nsg-${local.base}-app"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  tags                = local.tags
}

resource "azurerm_subnet_network_security_group_association" "app" {
  subnet_id                 = azurerm_subnet.app.id
  network_security_group_id = azurerm_network_security_group.app.id
}

# ---- telemetry -------------------------------------------------------------------------------

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${local.base}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_application_insights" "main" {
  name                = "appi-${local.base}"
  resource_group_name = azurerm_resource_group.main.name
  location            = azurerm_resource_group.main.location
  workspace_id        = azurerm_log_analytics_workspace.main.id
  application_type    = "other"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

# ---- storage: the Functions host's state and the deployment package; shared keys off ----------

resource "azurerm_storage_account" "main" {
  name                            = substr("st${local.base}", 0, 24)
  resource_group_name             = azurerm_resource_group.main.name
  location                        = azurerm_resource_group.main.location
  account_tier                    = "Standard"
  account_replication_type        = "RAGRS"
  min_tls_version                 = "TLS1_2"
  https_traffic_only_enabled      = true
  allow_nested_items_to_be_public = false
  shared_access_key_enabled       = false
  default_to_oauth_authentication = true
  local_user_enabled              = false
  tags                            = local.tags

  blob_properties {
    delete_retention_policy {
      days = 7
    }
    container_delete_retention_policy {
      days = 7
    }
  }

  network_rules {
    default_action             = "Deny"
    bypass                     = ["AzureServices", "Logging", "Metrics"]
    ip_rules                   = [for r in var.allowed_ip_ranges : replace(r, "/32", "")]
    virtual_network_subnet_ids = [azurerm_subnet.app.id]
  }

  sas_policy {
    expiration_period = "01.00:00:00"
  }
}

# Reads, writes and deletes of blobs and queues, kept with the rest of the telemetry.
resource "azurerm_monitor_diagnostic_setting" "storage" {
  for_each                   = toset(["blobServices", "queueServices"])
  name                       = "storage-to-log-analytics"
  target_resource_id         = "${azurerm_storage_account.main.id}/${each.key}/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  enabled_log {
    category = "StorageRead"
  }
  enabled_log {
    category = "StorageWrite"
  }
  enabled_log {
    category = "StorageDelete"
  }
}

resource "azurerm_storage_container" "deployments" {
  name                  = "deployments"
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

# Where CSV files to import are uploaded (POST /api/admin/imports and the SyncDatasets timer read
# them with the identity).
resource "azurerm_storage_container" "datasets" {
  name                  = "datasets"
  storage_account_id    = azurerm_storage_account.main.id
  container_access_type = "private"
}

# ---- Azure SQL: Entra ID authentication only -------------------------------------------------

resource "azurerm_mssql_server" "main" {
  name                          = "sql-${local.base}"
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  version                       = "12.0"
  minimum_tls_version           = "1.2"
  public_network_access_enabled = true
  tags                          = local.tags

  azuread_administrator {
    login_username              = var.sql_admin_group_name
    object_id                   = var.sql_admin_group_object_id
    azuread_authentication_only = true
  }

  identity {
    type = "SystemAssigned"
  }
}

resource "azurerm_mssql_database" "main" {
  name                        = "smartcache"
  server_id                   = azurerm_mssql_server.main.id
  sku_name                    = var.sql_sku
  auto_pause_delay_in_minutes = startswith(var.sql_sku, "GP_S_") ? 60 : null
  min_capacity                = startswith(var.sql_sku, "GP_S_") ? 0.5 : null
  tags                        = local.tags
}

resource "azurerm_mssql_virtual_network_rule" "app" {
  name      = "app-subnet"
  server_id = azurerm_mssql_server.main.id
  subnet_id = azurerm_subnet.app.id
}

resource "azurerm_mssql_firewall_rule" "operators" {
  for_each         = local.operator_ranges
  name             = "operator-${replace(replace(each.key, ".", "-"), "/", "_")}"
  server_id        = azurerm_mssql_server.main.id
  start_ip_address = each.value.start
  end_ip_address   = each.value.end
}

resource "azurerm_mssql_server_extended_auditing_policy" "main" {
  server_id              = azurerm_mssql_server.main.id
  log_monitoring_enabled = true
  retention_in_days      = var.log_retention_days
}

resource "azurerm_monitor_diagnostic_setting" "sql_audit" {
  name                       = "audit-to-log-analytics"
  target_resource_id         = "${azurerm_mssql_server.main.id}/databases/master"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id
  enabled_log {
    category = "SQLSecurityAuditEvents"
  }
}

resource "azurerm_mssql_server_security_alert_policy" "main" {
  resource_group_name  = azurerm_resource_group.main.name
  server_name          = azurerm_mssql_server.main.name
  state                = "Enabled"
  email_addresses      = var.security_alert_emails
  email_account_admins = true
}

# ---- Azure Cache for Redis: Entra ID tokens only, TLS only --------------------------------------

resource "azurerm_redis_cache" "main" {
  name                               = "redis-${local.base}"
  resource_group_name                = azurerm_resource_group.main.name
  location                           = azurerm_resource_group.main.location
  capacity                           = var.redis_capacity
  family                             = var.redis_sku == "Premium" ? "P" : "C"
  sku_name                           = var.redis_sku
  non_ssl_port_enabled               = false
  minimum_tls_version                = "1.2"
  access_keys_authentication_enabled = false
  public_network_access_enabled      = true
  tags                               = local.tags

  redis_configuration {
    active_directory_authentication_enabled = true
  }
}

resource "azurerm_redis_cache_access_policy_assignment" "app" {
  name               = "smartcache-app"
  redis_cache_id     = azurerm_redis_cache.main.id
  access_policy_name = "Data Owner"
  object_id          = azurerm_user_assigned_identity.app.principal_id
  object_id_alias    = "smartcache-app"
}

# ---- Key Vault: the JWT signing secret, never in state or app settings --------------------------

resource "azurerm_key_vault" "main" {
  name                          = substr("kv-${local.base}", 0, 24)
  resource_group_name           = azurerm_resource_group.main.name
  location                      = azurerm_resource_group.main.location
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  rbac_authorization_enabled    = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = 90
  public_network_access_enabled = true
  tags                          = local.tags

  network_acls {
    default_action             = "Deny"
    bypass                     = "AzureServices"
    ip_rules                   = var.allowed_ip_ranges
    virtual_network_subnet_ids = [azurerm_subnet.app.id]
  }
}

# Generated at apply time and written once (write-only): Terraform's state never holds it.
ephemeral "random_password" "jwt_secret" {
  length  = 64
  special = false
}

resource "azurerm_key_vault_secret" "jwt_secret" {
  name             = "jwt-secret"
  key_vault_id     = azurerm_key_vault.main.id
  value_wo         = ephemeral.random_password.jwt_secret.result
  value_wo_version = var.jwt_secret_version
  content_type     = "text/plain"
  expiration_date  = var.jwt_secret_expiry
  depends_on       = [azurerm_role_assignment.deployer_secrets]
}

resource "azurerm_key_vault_secret" "appinsights" {
  name            = "appinsights-connection-string"
  key_vault_id    = azurerm_key_vault.main.id
  value           = azurerm_application_insights.main.connection_string
  content_type    = "text/plain"
  expiration_date = var.jwt_secret_expiry
  depends_on      = [azurerm_role_assignment.deployer_secrets]
}

# ---- the function app -----------------------------------------------------------------------------

resource "azurerm_service_plan" "main" {
  name                         = "asp-${local.base}"
  resource_group_name          = azurerm_resource_group.main.name
  location                     = azurerm_resource_group.main.location
  os_type                      = "Linux"
  sku_name                     = var.function_plan_sku
  maximum_elastic_worker_count = 20
  tags                         = local.tags
}

resource "azurerm_linux_function_app" "main" {
  name                            = "func-${local.base}"
  resource_group_name             = azurerm_resource_group.main.name
  location                        = azurerm_resource_group.main.location
  service_plan_id                 = azurerm_service_plan.main.id
  functions_extension_version     = "~4"
  https_only                      = true
  public_network_access_enabled   = true
  virtual_network_subnet_id       = azurerm_subnet.app.id
  key_vault_reference_identity_id = azurerm_user_assigned_identity.app.id
  # The host's storage through the identity (AzureWebJobsStorage__accountName): no key, and no
  # Azure Files content share (the app runs from its package URL).
  storage_account_name          = azurerm_storage_account.main.name
  storage_uses_managed_identity = true
  builtin_logging_enabled       = false
  ftp_publish_basic_authentication_enabled       = false
  webdeploy_publish_basic_authentication_enabled = false
  tags                            = local.tags

  identity {
    type         = "UserAssigned"
    identity_ids = [azurerm_user_assigned_identity.app.id]
  }

  site_config {
    application_stack {
      use_custom_runtime = true
    }
    elastic_instance_minimum  = var.always_ready_instances
    pre_warmed_instance_count = var.always_ready_instances
    http2_enabled             = true
    minimum_tls_version       = "1.2"
    ftps_state                = "Disabled"
    vnet_route_all_enabled    = true
    health_check_path         = "/api/health"
    health_check_eviction_time_in_min = 5
    # A Key Vault reference: the connection string is not in plain app settings.
    application_insights_connection_string = "@Microsoft.KeyVault(SecretUri=${azurerm_key_vault.main.vault_uri}secrets/${azurerm_key_vault_secret.appinsights.name}/)"
  }

  # Every connection authenticates with the identity; secrets are Key Vault references.
  app_settings = {
    AzureWebJobsStorage__credential               = "managedidentity"
    AzureWebJobsStorage__clientId                 = azurerm_user_assigned_identity.app.client_id
    WEBSITE_RUN_FROM_PACKAGE                      = local.package_url
    WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID  = azurerm_user_assigned_identity.app.id
    AZURE_CLIENT_ID                               = azurerm_user_assigned_identity.app.client_id
    DATABASE_URL                                  = "Server=tcp:${azurerm_mssql_server.main.fully_qualified_domain_name},1433;Initial Catalog=${azurerm_mssql_database.main.name};Encrypt=True;TrustServerCertificate=False;Authentication=Active Directory Default;"
    REDIS_URL                                     = "rediss://${azurerm_redis_cache.main.hostname}:${azurerm_redis_cache.main.ssl_port}"
    REDIS_AUTH                                    = "entra"
    AZURE_STORAGE_AUTH                            = "identity"
    JWT_SECRET                                    = "@Microsoft.KeyVault(SecretUri=${azurerm_key_vault.main.vault_uri}secrets/${azurerm_key_vault_secret.jwt_secret.name}/)"
    WARMUP_SCHEDULE                               = "0 */5 * * * *"
    SYNC_SCHEDULE                                 = "0 */15 * * * *"
  }

  depends_on = [
    azurerm_role_assignment.app_blob,
    azurerm_role_assignment.app_queue,
    azurerm_role_assignment.app_table,
    azurerm_role_assignment.app_secrets,
  ]
}

# ---- roles: the app's identity, and the deployer (to write the secret and upload the package) ---

resource "azurerm_role_assignment" "app_blob" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "app_queue" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Queue Data Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "app_table" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Table Data Contributor"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "app_secrets" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "app_metrics" {
  scope                = azurerm_application_insights.main.id
  role_definition_name = "Monitoring Metrics Publisher"
  principal_id         = azurerm_user_assigned_identity.app.principal_id
  principal_type       = "ServicePrincipal"
}

resource "azurerm_role_assignment" "deployer_secrets" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

resource "azurerm_role_assignment" "deployer_blob" {
  scope                = azurerm_storage_account.main.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = data.azurerm_client_config.current.object_id
}
