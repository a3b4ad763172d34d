# The inference API keys (comma-separated) reach the container as OBJDETECT_API_KEYS through the
# task definition's `secrets`, never as a plain environment value. Terraform creates the secret
# but never its value, so no key lands in the state file: put it with the AWS CLI
# (README "Deploy to AWS", step 4).
resource "aws_secretsmanager_secret" "api_keys" {
  #checkov:skip=CKV2_AWS_57:The keys are held by API clients; rotating means adding a new key next to the old one, handing it out, then removing the old one (README "Rotating API keys"). A rotation Lambda would lock clients out.
  name                    = "${var.name}/api-keys"
  description             = "Comma-separated API keys for ${var.name}'s inference API (OBJDETECT_API_KEYS)."
  kms_key_id              = aws_kms_key.this.arn
  recovery_window_in_days = 7
}
