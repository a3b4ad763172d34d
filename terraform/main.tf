# Shared lookups and names. Each concern has its own file: ecr.tf, ecs_cluster.tf, capacity.tf,
# task.tf, service.tf, alb.tf, waf.tf, security_groups.tf, autoscaling.tf, iam.tf, network.tf,
# logs.tf, secrets.tf, kms.tf.

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # TorchServe's inference port: the only port the load balancer reaches. Management (8081) and
  # metrics (8082) listen on 127.0.0.1 inside the container and are never mapped or opened.
  inference_port = 8080
  container_name = "objdetect"

  https = var.certificate_arn != ""
}
