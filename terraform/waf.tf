# A WAF in front of the load balancer: AWS's Known Bad Inputs rules (Log4Shell and other Java
# exploits: TorchServe's frontend is Java), a refusal of bodies the API does not take, and a per-IP
# rate limit. Decisions are logged with the API key headers redacted.

locals {
  # What the API takes (docs/api.md): images, bytes, JSON, multipart forms, and the label curl
  # --data-binary puts on an image (the frontend passes that on as a plain body). Anything else
  # (XML, serialized Java objects, text) never reaches the frontend's decoders. Matched lowercased.
  accepted_content_types = "^(image/[a-z0-9.+-]+|application/(octet-stream|json|[a-z0-9.+-]+\\+json|x-www-form-urlencoded)|multipart/form-data)[ \\t]*(;.*)?$"
}

resource "aws_wafv2_web_acl" "this" {
  name        = var.name
  description = "${var.name}: known bad inputs and a per-IP rate limit"
  scope       = "REGIONAL"

  default_action {
    allow {}
  }

  rule {
    name     = "known-bad-inputs"
    priority = 1

    override_action {
      none {}
    }

    statement {
      managed_rule_group_statement {
        vendor_name = "AWS"
        name        = "AWSManagedRulesKnownBadInputsRuleSet"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-known-bad-inputs"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "accepted-content-types"
    priority = 2

    action {
      block {
        custom_response {
          response_code            = 415
          custom_response_body_key = "unsupported-media-type"
        }
      }
    }

    # A Content-Type that is present and not one the API takes (no Content-Type: the body is
    # read as an image, as `curl -T` sends it).
    statement {
      and_statement {
        statement {
          size_constraint_statement {
            comparison_operator = "GT"
            size                = 0
            field_to_match {
              single_header {
                name = "content-type"
              }
            }
            text_transformation {
              priority = 0
              type     = "NONE"
            }
          }
        }
        statement {
          not_statement {
            statement {
              regex_match_statement {
                regex_string = local.accepted_content_types
                field_to_match {
                  single_header {
                    name = "content-type"
                  }
                }
                text_transformation {
                  priority = 0
                  type     = "LOWERCASE"
                }
              }
            }
          }
        }
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-accepted-content-types"
      sampled_requests_enabled   = true
    }
  }

  rule {
    name     = "rate-limit-per-ip"
    priority = 3

    action {
      block {}
    }

    statement {
      rate_based_statement {
        limit              = var.waf_rate_limit
        aggregate_key_type = "IP"
      }
    }

    visibility_config {
      cloudwatch_metrics_enabled = true
      metric_name                = "${var.name}-rate-limit-per-ip"
      sampled_requests_enabled   = true
    }
  }

  custom_response_body {
    key          = "unsupported-media-type"
    content_type = "APPLICATION_JSON"
    content      = jsonencode({ error = "unsupported_media_type", message = "send an image (raw, in a multipart form) or JSON with 'url' or 'b64'" })
  }

  visibility_config {
    cloudwatch_metrics_enabled = true
    metric_name                = var.name
    sampled_requests_enabled   = true
  }
}

resource "aws_wafv2_web_acl_association" "this" {
  resource_arn = aws_lb.this.arn
  web_acl_arn  = aws_wafv2_web_acl.this.arn
}

resource "aws_wafv2_web_acl_logging_configuration" "this" {
  resource_arn            = aws_wafv2_web_acl.this.arn
  log_destination_configs = [aws_cloudwatch_log_group.waf.arn]

  # Clients send their API key in one of these headers: never write it to a log.
  redacted_fields {
    single_header {
      name = "authorization"
    }
  }

  redacted_fields {
    single_header {
      name = "x-api-key"
    }
  }
}
