# Log groups: the container's output (awslogs), ECS Exec sessions (an audit trail of what
# operators ran against the management API), and the WAF's decisions. All KMS-encrypted.

locals {
  log_group_service = "/ecs/${var.name}"
  log_group_exec    = "/ecs/${var.name}/exec"
  log_group_waf     = "aws-waf-logs-${var.name}" # WAF requires the aws-waf-logs- prefix
}

resource "aws_cloudwatch_log_group" "service" {
  name              = local.log_group_service
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}

resource "aws_cloudwatch_log_group" "exec" {
  name              = local.log_group_exec
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}

resource "aws_cloudwatch_log_group" "waf" {
  name              = local.log_group_waf
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}
