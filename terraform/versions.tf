terraform {
  # 1.11: cross-variable validation and S3-native state locking (use_lockfile) are relied on.
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 6.0"
    }
  }
}
