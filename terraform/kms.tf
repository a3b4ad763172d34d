# One customer managed key for this deployment's data at rest: ECR images, the API keys secret,
# the log groups, ECS Exec sessions, the alarm topic and the model store (models.tf: the task role
# decrypts and the operators' role encrypts through S3 only). Rotated yearly by KMS.

locals {
  # Built from names, not from the log group resources: those depend on this key.
  log_group_arns = [
    for name in [local.log_group_service, local.log_group_exec, local.log_group_waf, local.log_group_batch] :
    "arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:${name}"
  ]
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: ECR images, API keys secret, CloudWatch logs, ECS Exec sessions, model store"
  enable_key_rotation     = true
  deletion_window_in_days = 30

  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # The account administers and uses the key through IAM policies (the roles in iam.tf
        # get only what they need); without this statement the key would be unmanageable.
        Sid       = "AccountManagesKeyThroughIAM"
        Effect    = "Allow"
        Principal = { AWS = "arn:${local.partition}:iam::${local.account_id}:root" }
        Action    = "kms:*"
        Resource  = "*"
      },
      {
        # CloudWatch Logs encrypts exactly this deployment's log groups with it.
        Sid       = "CloudWatchLogsEncryptsThisDeploymentsLogGroups"
        Effect    = "Allow"
        Principal = { Service = "logs.${var.region}.amazonaws.com" }
        Action    = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
        Resource  = "*"
        Condition = {
          ArnLike = { "kms:EncryptionContext:aws:logs:arn" = local.log_group_arns }
        }
      },
      {
        # CloudWatch alarms publish to the encrypted alarm topic (monitoring.tf).
        Sid       = "CloudWatchAlarmsPublishToTheAlarmTopic"
        Effect    = "Allow"
        Principal = { Service = "cloudwatch.amazonaws.com" }
        Action    = ["kms:Decrypt", "kms:GenerateDataKey*"]
        Resource  = "*"
        Condition = {
          StringEquals = { "aws:SourceAccount" = local.account_id }
        }
      },
    ]
  })
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
