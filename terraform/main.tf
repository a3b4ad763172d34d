# Shared lookups and names. Each concern has its own file: ecr.tf, ecs_cluster.tf, capacity.tf,
# task.tf, service.tf, alb.tf, waf.tf, security_groups.tf, autoscaling.tf, iam.tf, network.tf,
# logs.tf, secrets.tf, kms.tf, monitoring.tf, models.tf, batch.tf.

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

  # Stopping a task (deploy, scale-in, instance drain; docs/operations.md "Reliability"), in order: ECS
  # deregisters it from the target group, and the load balancer sends it nothing new while letting
  # requests in flight finish, for at most the deregistration delay; then ECS sends SIGTERM. The
  # entrypoint drains (answers what it holds, 503s what still comes) for at most drain_timeout_s,
  # stops TorchServe in about 3 s, and exits; ECS sends SIGKILL at stopTimeout.
  # A request is in flight through the load balancer for at most its idle timeout: TorchServe
  # answers or times out within 60 s (default_response_timeout in config.properties).
  longest_request_s = 75
  drain_timeout_s   = var.drain_timeout_seconds
  stop_timeout_s    = local.drain_timeout_s + 15
}
