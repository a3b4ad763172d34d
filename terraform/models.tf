# The model store: an S3 bucket of model archives and release manifests (README "Model releases").
#   archives/<sha256>.mar            an archive, stored once under its content's SHA-256
#   versions/<name>/<version>.json   what `scripts/models.py publish` recorded about a version
#   releases/<id>.json               a release manifest; written once, never replaced (bucket policy)
# Tasks read archives/ and releases/ (task role, iam.tf); only the model operators' role (iam.tf) writes.

locals {
  # Globally unique and predictable: the deployment's name, this account and region (at most 63 characters).
  model_store_bucket = "${var.name}-models-${local.account_id}-${var.region}"
}

resource "aws_s3_bucket" "models" {
  #checkov:skip=CKV_AWS_144:Everything here can be published again from its inputs (scripts/models.py publish) and versioning keeps every replaced or deleted object for model_store_noncurrent_days. A copy in a second region belongs to the account's disaster recovery plan, not to this deployment.
  #checkov:skip=CKV2_AWS_62:Nothing reacts to an upload: a task reads exactly the release its task definition names, by URI and SHA-256, when it starts.
  bucket = local.model_store_bucket
  # false: terraform destroy stops at a bucket that holds archives (they are the way back to a release).
  force_destroy = var.model_store_force_destroy
}

resource "aws_s3_bucket_ownership_controls" "models" {
  bucket = aws_s3_bucket.models.id
  rule {
    object_ownership = "BucketOwnerEnforced" # ACLs off: the bucket policy and IAM alone decide
  }
}

resource "aws_s3_bucket_public_access_block" "models" {
  bucket                  = aws_s3_bucket.models.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "models" {
  bucket = aws_s3_bucket.models.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "models" {
  bucket = aws_s3_bucket.models.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = aws_kms_key.this.arn
    }
    # One data key per bucket rather than per object: far fewer KMS requests when a task starts.
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "models" {
  bucket = aws_s3_bucket.models.id

  rule {
    id     = "expire-replaced-versions-and-abandoned-uploads"
    status = "Enabled"
    filter {}

    # Current objects stay: a release names its archives forever. An object replaced or deleted
    # (only the operators' role can) is kept this long, then expires.
    noncurrent_version_expiration {
      noncurrent_days = var.model_store_noncurrent_days
    }
    expiration {
      expired_object_delete_marker = true
    }
    # An interrupted upload of a large archive.
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  depends_on = [aws_s3_bucket_versioning.models]
}

# Server access logs when model_store_access_logs_bucket names a bucket (as alb_access_logs_bucket
# does for the load balancer). Writes come from the operators' role alone; CloudTrail data events
# record object access where the account turns them on.
resource "aws_s3_bucket_logging" "models" {
  count         = var.model_store_access_logs_bucket == "" ? 0 : 1
  bucket        = aws_s3_bucket.models.id
  target_bucket = var.model_store_access_logs_bucket
  target_prefix = "${local.model_store_bucket}/"
}

data "aws_iam_policy_document" "model_store" {
  statement {
    sid       = "DenyRequestsWithoutTLS"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.models.arn, "${aws_s3_bucket.models.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # Whatever IAM grants elsewhere in the account, only the operators' role writes or deletes
  # objects. Bucket settings stay with the account's administrators (terraform); on destroy the
  # policy goes before the bucket, so force_destroy can empty it.
  statement {
    sid    = "OnlyTheOperatorsRoleWritesOrDeletes"
    effect = "Deny"
    actions = [
      "s3:PutObject*",
      "s3:DeleteObject*",
      "s3:ReplicateObject",
      "s3:ReplicateDelete",
      "s3:RestoreObject",
    ]
    resources = ["${aws_s3_bucket.models.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [aws_iam_role.model_operator.arn]
    }
  }

  # Release manifests and version records are written once: only with If-None-Match (S3's
  # conditional write, which scripts/models.py sends), so not even the operators' role replaces one.
  statement {
    sid       = "ReleasesAndVersionRecordsAreWrittenOnce"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.models.arn}/releases/*", "${aws_s3_bucket.models.arn}/versions/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Null"
      variable = "s3:if-none-match"
      values   = ["true"]
    }
  }
}

resource "aws_s3_bucket_policy" "models" {
  bucket = aws_s3_bucket.models.id
  policy = data.aws_iam_policy_document.model_store.json
  # S3 refuses a policy while the public access block is being set on the same bucket.
  depends_on = [aws_s3_bucket_public_access_block.models]
}
