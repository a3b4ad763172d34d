# Batch jobs (docs/batch.md): detection over S3 prefixes as AWS Batch array jobs, with the service's
# image and model release, on GPU instances that Batch starts for queued jobs and stops when the
# queue is empty (min_vcpus = 0: nothing runs, nothing is billed, between jobs). Created only when
# var.batch is set. scripts/batch.py submit lists the input once, writes one shard manifest per
# child under the job's output, and submits an array job; each child runs
# `server.py batch OUTPUT` (objdetect_serving.batch), takes its shard by AWS_BATCH_JOB_ARRAY_INDEX
# and writes its results in parts, skipping parts an earlier attempt wrote, so a retried child
# (a Spot instance reclaimed) writes nothing twice and loses nothing.

locals {
  batch = var.batch == null ? {} : { this = var.batch }

  # "s3://bucket/prefix/" -> the ARN of every object under the prefix; the output's bucket and prefix.
  batch_input_objects = var.batch == null ? [] : [
    for uri in var.batch.inputs : "arn:${local.partition}:s3:::${trimsuffix(trimprefix(uri, "s3://"), "/")}/*"
  ]
  batch_output_path   = var.batch == null ? "" : trimsuffix(trimprefix(var.batch.output, "s3://"), "/")
  batch_output_bucket = split("/", local.batch_output_path)[0]
  batch_output_prefix = trimprefix(trimprefix(local.batch_output_path, local.batch_output_bucket), "/")
  log_group_batch     = "/aws/batch/${var.name}"
  # A child without a usable GPU stops at once rather than crawling on the CPU; the release is the
  # service's (task.tf).
  batch_environment = merge({ OBJDETECT_REQUIRE_CUDA = "true", TMPDIR = "/tmp" }, local.release_environment)
}

# --- where children run --------------------------------------------------------------------------

resource "aws_security_group" "batch" {
  for_each    = local.batch
  name        = "${var.name}-batch"
  description = "${var.name} batch GPU instances: no ingress; HTTPS out for S3, ECR, logs and the ECS agent"
  vpc_id      = data.aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "batch_https" {
  for_each          = local.batch
  security_group_id = aws_security_group.batch[each.key].id
  description       = "HTTPS: S3 (images, results, the model store), ECR, CloudWatch Logs, the ECS agent"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

# No service_role: AWS Batch uses its service-linked role (AWSServiceRoleForBatch). Instances
# are the ECS GPU-optimized Amazon Linux 2023 AMI and join Batch's own ECS cluster with the same
# instance profile as the service's (AWS's managed ECS-for-EC2 policy).
resource "aws_batch_compute_environment" "gpu" {
  for_each = local.batch
  name     = "${var.name}-batch-gpu"
  type     = "MANAGED"

  compute_resources {
    type                = each.value.spot ? "SPOT" : "EC2"
    allocation_strategy = each.value.spot ? "SPOT_PRICE_CAPACITY_OPTIMIZED" : "BEST_FIT_PROGRESSIVE"
    min_vcpus           = 0
    max_vcpus           = each.value.max_vcpus
    instance_type       = each.value.instance_types
    instance_role       = aws_iam_instance_profile.instance.arn
    subnets             = var.private_subnet_ids
    security_group_ids  = [aws_security_group.batch[each.key].id]

    ec2_configuration {
      image_type = "ECS_AL2023_NVIDIA"
    }
  }
}

resource "aws_batch_job_queue" "detect" {
  for_each = local.batch
  name     = "${var.name}-detect"
  state    = "ENABLED"
  priority = 1

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.gpu[each.key].arn
  }
}

resource "aws_cloudwatch_log_group" "batch" {
  for_each          = local.batch
  name              = local.log_group_batch
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
}

# --- what each child runs --------------------------------------------------------------------------

resource "aws_batch_job_definition" "detect" {
  for_each              = local.batch
  name                  = "${var.name}-detect"
  type                  = "container"
  platform_capabilities = ["EC2"]
  propagate_tags        = true

  container_properties = jsonencode({
    # The service's image and release: the same pipeline, settings and model versions. Batch cannot
    # replace the image's ENTRYPOINT (server.py), so the command starts with its `batch` verb;
    # scripts/batch.py submit appends the job's output.
    image            = "${aws_ecr_repository.this.repository_url}:${var.image_tag}"
    command          = ["batch"]
    jobRoleArn       = aws_iam_role.batch_job[each.key].arn
    executionRoleArn = aws_iam_role.execution.arn
    user             = "10001:10001"
    privileged       = false

    resourceRequirements = [
      { type = "GPU", value = "1" },
      { type = "VCPU", value = tostring(each.value.vcpus) },
      { type = "MEMORY", value = tostring(each.value.memory_mib) },
    ]
    environment = [for key, value in local.batch_environment : { name = key, value = value }]

    readonlyRootFilesystem = true
    linuxParameters = {
      tmpfs = [{ containerPath = "/tmp", size = local.scratch_mib, mountOptions = ["rw", "exec", "nosuid", "nodev"] }]
    }

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = local.log_group_batch
        awslogs-region        = var.region
        awslogs-stream-prefix = "detect"
      }
    }
  })

  # A reclaimed Spot instance ("Host EC2 (instance i-...) terminated.") is tried again, on
  # another instance, and the child skips the parts it wrote; anything else is final: an image
  # that fails is a line, so a failed child is a defect to read in its log, not to retry blindly.
  retry_strategy {
    attempts = each.value.attempts
    evaluate_on_exit {
      on_status_reason = "Host EC2*"
      action           = "RETRY"
    }
    evaluate_on_exit {
      on_reason = "*"
      action    = "EXIT"
    }
  }

  timeout {
    attempt_duration_seconds = each.value.child_timeout_seconds
  }
}

# --- the job role: read the inputs and the model release, write only the output --------------------

resource "aws_iam_role" "batch_job" {
  for_each           = local.batch
  name               = "${var.name}-batch-job"
  description        = "${var.name} batch children: read the input prefixes and the model release, write the output prefix"
  assume_role_policy = data.aws_iam_policy_document.task_assume.json
}

data "aws_iam_policy_document" "batch_job" {
  for_each = local.batch

  statement {
    sid       = "ReadInputs"
    actions   = ["s3:GetObject"]
    resources = local.batch_input_objects
  }
  # job.json and the shard manifests (written at submit), and the parts: a child lists its own
  # results to skip what an earlier attempt wrote.
  statement {
    sid       = "ReadAndWriteTheOutput"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:AbortMultipartUpload"]
    resources = ["arn:${local.partition}:s3:::${local.batch_output_path}/*"]
  }
  statement {
    sid       = "ListTheOutput"
    actions   = ["s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${local.batch_output_bucket}"]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [local.batch_output_prefix == "" ? "*" : "${local.batch_output_prefix}/*"]
    }
  }
  statement {
    sid       = "ReadTheModelRelease"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.models.arn}/archives/*", "${aws_s3_bucket.models.arn}/releases/*"]
  }
  # SSE-KMS: reads decrypt; writes generate a data key (and decrypt, for multipart uploads).
  statement {
    sid       = "S3Encryption"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = concat([aws_kms_key.this.arn], each.value.kms_key_arns)
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${var.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "batch_job" {
  for_each = local.batch
  name     = "inputs-release-output"
  role     = aws_iam_role.batch_job[each.key].id
  policy   = data.aws_iam_policy_document.batch_job[each.key].json
}
