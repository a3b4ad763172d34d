# Five roles, each with only what its holder does:
#   execution role: the ECS agent pulls this repository's image, writes this log group, reads this secret
#   task role:      the container itself; reads its release's manifest and archives from the model store
#                   (models.tf), and ECS Exec's channel and its audit log. It writes nothing.
#   instance role:  the GPU instances join the cluster (AWS's managed ECS-for-EC2 policy)
#   model operator: publishes archives and release manifests, rolls releases out (scripts/models.py)
#   ECS infrastructure role: ECS itself, during a canary or linear release, registers tasks with the
#                   two target groups and shifts the production listener rule's weights (alb.tf)

# ECS's agent assumes the execution role (AWS's documented trust policy has no conditions).
data "aws_iam_policy_document" "execution_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

# Tasks assume the task role; only tasks of this account in this region may (confused-deputy guard,
# as AWS recommends for task roles).
data "aws_iam_policy_document" "task_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${var.region}:${local.account_id}:*"]
    }
  }
}

# --- execution role ---------------------------------------------------------------------------

resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  description        = "ECS agent for ${var.name} (and its batch jobs): pull the image, write logs, read the API keys secret"
  assume_role_policy = data.aws_iam_policy_document.execution_assume.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid = "EcrLogin"
    # GetAuthorizationToken has no resource-level permissions: it is always "*".
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
  statement {
    sid       = "PullThisRepository"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
    resources = [aws_ecr_repository.this.arn]
  }
  statement {
    sid       = "WriteServiceLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = concat(["${aws_cloudwatch_log_group.service.arn}:*"], [for group in aws_cloudwatch_log_group.batch : "${group.arn}:*"])
  }
  statement {
    sid       = "ReadApiKeysSecret"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.api_keys.arn]
  }
  statement {
    sid       = "DecryptApiKeysSecret"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "pull-log-secret"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# --- task role --------------------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  description        = "The ${var.name} container: read its release from the model store; ECS Exec channel and its audit log"
  assume_role_policy = data.aws_iam_policy_document.task_assume.json
}

data "aws_iam_policy_document" "task_exec" {
  #checkov:skip=CKV_AWS_111:ssmmessages channel actions support no resource-level permissions (AWS service authorization reference); they are "*" by necessity and carry only the ECS Exec session.
  #checkov:skip=CKV_AWS_356:Same as CKV_AWS_111: ssmmessages actions and logs:DescribeLogGroups cannot be scoped to a resource.
  statement {
    sid = "EcsExecChannel"
    actions = [
      "ssmmessages:CreateControlChannel",
      "ssmmessages:CreateDataChannel",
      "ssmmessages:OpenControlChannel",
      "ssmmessages:OpenDataChannel",
    ]
    resources = ["*"]
  }
  statement {
    sid       = "EcsExecFindsItsLogGroup"
    actions   = ["logs:DescribeLogGroups"]
    resources = ["*"]
  }
  statement {
    sid       = "EcsExecAuditLog"
    actions   = ["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.exec.arn}:*"]
  }
  statement {
    sid       = "EcsExecSessionEncryption"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
  }
}

# The entrypoint downloads the release's manifest and archives (objdetect_serving.release): read
# only, those two prefixes only. No ListBucket: a missing object answers 403, as a denied one does.
data "aws_iam_policy_document" "task_model_store" {
  statement {
    sid       = "ReadReleasesAndArchives"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.models.arn}/archives/*", "${aws_s3_bucket.models.arn}/releases/*"]
  }
  statement {
    sid       = "DecryptTheModelStore"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "task_model_store" {
  name   = "read-model-store"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task_model_store.json
}

resource "aws_iam_role_policy" "task_exec" {
  count  = var.enable_execute_command ? 1 : 0
  name   = "ecs-exec"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task_exec.json
}

# --- instance role ----------------------------------------------------------------------------

data "aws_iam_policy_document" "ec2_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "instance" {
  name               = "${var.name}-gpu-instance"
  description        = "${var.name} GPU container instances: register with the ECS cluster"
  assume_role_policy = data.aws_iam_policy_document.ec2_assume.json
}

# AWS's managed policy for ECS container instances (register, poll, submit state, telemetry).
# No SSM Session Manager on the hosts: operators reach containers with ECS Exec, which runs in the
# task under the task role above.
resource "aws_iam_role_policy_attachment" "instance_ecs" {
  role       = aws_iam_role.instance.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role"
}

resource "aws_iam_instance_profile" "instance" {
  name = "${var.name}-gpu-instance"
  role = aws_iam_role.instance.name
}

# --- ECS infrastructure role (load balancers) ----------------------------------------------------

# ECS assumes it to run the blue/green family's releases (CANARY, LINEAR): register and deregister
# tasks in the two target groups and change the production listener rule's weights. AWS documents
# the trust without conditions; the confused-deputy guard admits ECS only on behalf of this
# account's resources in this region, as the task role's trust does.
# Exactly AWS's documented trust policy for this role: no confused-deputy conditions, because AWS
# does not document that ECS sends aws:SourceAccount or aws:SourceArn when it assumes this role,
# and a condition it does not meet would fail every release. What the role may do is AWS's managed
# policy below, on this account's load balancers.
data "aws_iam_policy_document" "ecs_infrastructure_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ecs_infrastructure" {
  name               = "${var.name}-ecs-infrastructure"
  description        = "ECS shifts ${var.name}'s production listener rule and registers tasks in its two target groups during a release"
  assume_role_policy = data.aws_iam_policy_document.ecs_infrastructure_assume.json
}

# AWS's managed policy for exactly this (ELB reads, RegisterTargets and DeregisterTargets,
# ModifyListener, and ModifyRule on application load balancers' rules); AWS keeps it current as
# ECS's release steps change, which a hand-written copy would not be.
resource "aws_iam_role_policy_attachment" "ecs_infrastructure" {
  role       = aws_iam_role.ecs_infrastructure.name
  policy_arn = "arn:${local.partition}:iam::aws:policy/AmazonECSInfrastructureRolePolicyForLoadBalancers"
}

# --- model operator role ------------------------------------------------------------------------

# Who may assume it: model_operator_principals, or by default this account, i.e. any of its IAM
# principals whose own policy allows sts:AssumeRole on this role.
data "aws_iam_policy_document" "model_operator_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "AWS"
      identifiers = local.model_operator_principals
    }
  }
}

resource "aws_iam_role" "model_operator" {
  name               = "${var.name}-model-operator"
  description        = "${var.name} model releases: publish archives, write release manifests, roll releases out (scripts/models.py)"
  assume_role_policy = data.aws_iam_policy_document.model_operator_assume.json
}

locals {
  model_operator_principals = length(var.model_operator_principals) > 0 ? var.model_operator_principals : ["arn:${local.partition}:iam::${local.account_id}:root"]
}

data "aws_iam_policy_document" "model_operator" {
  statement {
    sid       = "FindTheStore"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [aws_s3_bucket.models.arn]
  }
  statement {
    sid     = "PublishAndRelease"
    actions = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
    resources = [
      "${aws_s3_bucket.models.arn}/archives/*",
      "${aws_s3_bucket.models.arn}/versions/*",
      "${aws_s3_bucket.models.arn}/releases/*",
    ]
  }
  statement {
    sid       = "EncryptAndDecryptTheModelStore"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
  statement {
    sid       = "RollOutThisService"
    actions   = ["ecs:DescribeServices", "ecs:UpdateService"]
    resources = [aws_ecs_service.this.arn]
  }
  statement {
    sid       = "SeeThisServicesTasks"
    actions   = ["ecs:DescribeTasks"]
    resources = ["arn:${local.partition}:ecs:${var.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]
  }
  statement {
    sid       = "ListThisClustersTasks"
    actions   = ["ecs:ListTasks"]
    resources = ["*"]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }
  statement {
    # No resource-level permissions for these three (AWS service authorization reference).
    sid       = "TaskDefinitions"
    actions   = ["ecs:DescribeTaskDefinition", "ecs:ListTaskDefinitions", "ecs:RegisterTaskDefinition"]
    resources = ["*"]
  }
  statement {
    # Reading a revision's tags (describe with include TAGS): rollback follows objdetect:previous.
    sid       = "ReadTagsOfThisFamily"
    actions   = ["ecs:ListTagsForResource"]
    resources = ["${aws_ecs_task_definition.this.arn_without_revision}:*"]
  }
  statement {
    # The tags a revision is registered with (this family only, and only when registering it).
    sid       = "TagNewRevisionsOfThisFamily"
    actions   = ["ecs:TagResource"]
    resources = ["${aws_ecs_task_definition.this.arn_without_revision}:*"]
    condition {
      test     = "StringEquals"
      variable = "ecs:CreateAction"
      values   = ["RegisterTaskDefinition"]
    }
  }
  statement {
    # A revision names the task and execution roles; the operator can hand ECS those two only.
    sid       = "PassTheTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.task.arn, aws_iam_role.execution.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "model_operator" {
  name   = "publish-and-release"
  role   = aws_iam_role.model_operator.id
  policy = data.aws_iam_policy_document.model_operator.json
}
