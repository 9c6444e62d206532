variable "name" {
  description = "Prefix of every resource name (3-12 lowercase letters and digits)."
  type        = string
  default     = "smartcache"
  validation {
    condition     = can(regex("^[a-z][a-z0-9]{2,11}$", var.name))
    error_message = "name must be 3-12 lowercase letters and digits, starting with a letter."
  }
}

variable "location" {
  description = "Azure region of every resource, e.g. westeurope."
  type        = string
  default     = "westeurope"
}

variable "sql_admin_group_name" {
  description = "Display name of the Entra ID group that administers Azure SQL (no SQL logins are created)."
  type        = string
}

variable "sql_admin_group_object_id" {
  description = "Object id of that Entra ID group."
  type        = string
  validation {
    condition     = can(regex("^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", var.sql_admin_group_object_id))
    error_message = "sql_admin_group_object_id must be a GUID."
  }
}

variable "allowed_ip_ranges" {
  description = "Public IP ranges (CIDR) of operators allowed to reach Key Vault, Storage and SQL, e.g. for imports; the function app always is."
  type        = list(string)
  default     = []
  validation {
    # Storage firewalls take single addresses and ranges up to /30, not /31.
    condition     = alltrue([for r in var.allowed_ip_ranges : can(cidrhost(r, 0)) && !endswith(r, "/31")])
    error_message = "allowed_ip_ranges must be CIDR ranges such as 203.0.113.0/24 or 203.0.113.7/32 (not /31)."
  }
}

variable "function_plan_sku" {
  description = "Elastic Premium plan size (EP1, EP2 or EP3)."
  type        = string
  default     = "EP1"
  validation {
    condition     = contains(["EP1", "EP2", "EP3"], var.function_plan_sku)
    error_message = "function_plan_sku must be EP1, EP2 or EP3."
  }
}

variable "always_ready_instances" {
  description = "Instances kept warm (no cold start): at least 1."
  type        = number
  default     = 1
  validation {
    condition     = var.always_ready_instances >= 1 && var.always_ready_instances <= 20
    error_message = "always_ready_instances must be between 1 and 20."
  }
}

variable "sql_sku" {
  description = "Azure SQL database service objective, e.g. S0, GP_S_Gen5_1 (serverless)."
  type        = string
  default     = "GP_S_Gen5_1"
}

variable "redis_sku" {
  description = "Azure Cache for Redis tier: Standard (replicated) or Premium (also zone redundancy, clustering)."
  type        = string
  default     = "Standard"
  validation {
    condition     = contains(["Standard", "Premium"], var.redis_sku)
    error_message = "redis_sku must be Standard or Premium (Basic has no replica and no SLA)."
  }
}

variable "redis_capacity" {
  description = "Azure Cache for Redis size within its tier (Standard C0-C6: 0-6; Premium P1-P5: 1-5)."
  type        = number
  default     = 1
  validation {
    condition     = var.redis_capacity >= 0 && var.redis_capacity <= 6
    error_message = "redis_capacity must be between 0 and 6 (1 to 5 for Premium)."
  }
}

variable "log_retention_days" {
  description = "Days Application Insights and the Log Analytics workspace keep telemetry."
  type        = number
  default     = 90
  validation {
    condition     = contains([30, 60, 90, 120, 180, 270, 365, 550, 730], var.log_retention_days)
    error_message = "log_retention_days must be one Application Insights accepts (30, 60, 90, 120, 180, 270, 365, 550 or 730)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "jwt_secret_version" {
  description = "Raise by one to generate and store a new JWT secret (existing tokens then stop working)."
  type        = number
  default     = 1
  validation {
    condition     = var.jwt_secret_version >= 1
    error_message = "jwt_secret_version must be at least 1."
  }
}

variable "jwt_secret_expiry" {
  description = "When the Key Vault secrets expire (RFC 3339, UTC); rotate before then."
  type        = string
  default     = "2027-12-31T00:00:00Z"
  validation {
    condition     = can(formatdate("YYYY", var.jwt_secret_expiry))
    error_message = "jwt_secret_expiry must be an RFC 3339 time such as 2027-12-31T00:00:00Z."
  }
}

variable "security_alert_emails" {
  description = "Who receives Azure SQL threat-detection alerts."
  type        = list(string)
  validation {
    condition     = length(var.security_alert_emails) > 0 && alltrue([for e in var.security_alert_emails : can(regex("^[^@ ]+@[^@ ]+\\.[^@ ]+$", e))])
    error_message = "security_alert_emails must list at least one email address."
  }
}
