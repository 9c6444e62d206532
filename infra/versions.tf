terraform {
  required_version = ">= 1.11" # ephemeral values, write-only attributes
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.42" # rbac_authorization_enabled (4.42), value_wo (4.23)
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
  }
}

provider "azurerm" {
  features {
    key_vault {
      purge_soft_delete_on_destroy = false
    }
  }
  # The storage account has shared keys disabled: the provider uses Entra ID for its data plane.
  storage_use_azuread = true
}
