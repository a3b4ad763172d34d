terraform {
  # 1.11: cross-variable validation and S3-native state locking (use_lockfile) are relied on.
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # >= 6.21: ECS canary deployments. make validate-terraform checks this configuration against
      # the schema of hashicorp/aws 6.69.1 (from the pinned cdktn-provider-aws bindings), which this
      # range must admit.
      version = ">= 6.21, < 7.0"
    }
  }
}
