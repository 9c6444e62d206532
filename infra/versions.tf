terraform {
  required_version = ">= 1.11" # ephemeral values, write-only attributes
  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 4.23"
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
  # The storage account has shared keys disabled: the provider manages its containers with
  # Entra ID, as the function app reads them.
  storage_use_azuread = true
}
