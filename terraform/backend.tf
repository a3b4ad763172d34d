# Remote state in S3 with S3-native locking. The bucket, key and region are per environment:
#   terraform init -backend-config=backend.hcl   (copy backend.hcl.example to backend.hcl)
terraform {
  backend "s3" {}
}
