output "ecr_repository_url" {
  description = "ECR repository URL: scripts/push.py pushes <url>:<git commit> here."
  value       = aws_ecr_repository.this.repository_url
}

output "alb_dns_name" {
  description = "DNS name of the load balancer (point a CNAME or alias record at it)."
  value       = aws_lb.this.dns_name
}

output "service_url" {
  description = "Base URL of the inference API."
  value       = "${local.https ? "https" : "http"}://${aws_lb.this.dns_name}"
}

output "cluster_name" {
  description = "ECS cluster name (scripts/deploy.py --cluster)."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service name (scripts/deploy.py --service)."
  value       = aws_ecs_service.this.name
}

output "task_definition_arn" {
  description = "The task definition revision terraform registered last (deploy.py --base-task-definition rolls it out)."
  value       = aws_ecs_task_definition.this.arn
}

output "api_keys_secret_arn" {
  description = "Secrets Manager secret holding the comma-separated API keys (put its value with the AWS CLI)."
  value       = aws_secretsmanager_secret.api_keys.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the container's output."
  value       = aws_cloudwatch_log_group.service.name
}

output "alarm_topic_arn" {
  description = "SNS topic every alarm notifies (subscribe a pager, chat or email to it)."
  value       = aws_sns_topic.alarms.arn
}

output "dashboard_url" {
  description = "The CloudWatch dashboard: throughput, latency, errors by code, stages, tasks and GPU."
  value       = "https://${var.region}.console.aws.amazon.com/cloudwatch/home?region=${var.region}#dashboards/dashboard/${aws_cloudwatch_dashboard.this.dashboard_name}"
}

output "model_store" {
  description = "The model store (scripts/models.py --store, or OBJDETECT_MODEL_STORE): archives and release manifests."
  value       = "s3://${aws_s3_bucket.models.bucket}"
}

output "model_operator_role_arn" {
  description = "The role that publishes to the model store and rolls releases out (scripts/models.py); the store's only writer."
  value       = aws_iam_role.model_operator.arn
}

output "production_listener_rule_arn" {
  description = "The listener rule whose weights ECS shifts during a canary or linear release (aws elbv2 describe-rules --rule-arns ... shows them)."
  value       = aws_lb_listener_rule.production.arn
}

output "batch_job_queue" {
  description = "The AWS Batch job queue for scripts/batch.py submit (null without var.batch)."
  value       = try(aws_batch_job_queue.detect["this"].name, null)
}

output "batch_job_definition" {
  description = "The AWS Batch job definition for scripts/batch.py submit (null without var.batch)."
  value       = try(aws_batch_job_definition.detect["this"].name, null)
}
