terraform {
  # 1.11: cross-variable validation and S3-native state locking (use_lockfile) are relied on.
  required_version = ">= 1.11"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # >= 6.21: the first release whose aws_ecs_service takes deployment_configuration's CANARY and
      # LINEAR strategies with their canary_configuration and linear_configuration blocks (its
      # CHANGELOG, 6.21.0 of November 13, 2025: "Add support for LINEAR and CANARY deployment
      # strategies"); deployment_configuration itself and load_balancer's
      # advanced_configuration came in 6.4.0, the alarms block long before. An older provider
      # refuses service.tf. make validate-terraform checks this configuration against the schema of
      # hashicorp/aws 6.69.1 (from the pinned cdktn-provider-aws bindings), which this range admits.
      version = ">= 6.21, < 7.0"
    }
  }
}
