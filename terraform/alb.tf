# The internet-facing Application Load Balancer: HTTPS when certificate_arn is set (port 80 then
# only redirects), plain HTTP otherwise (README "HTTP without a certificate").

resource "aws_lb" "this" {
  #checkov:skip=CKV_AWS_91:Access logs need an S3 bucket whose policy admits the region's ELB log delivery; they are on when alb_access_logs_bucket names one (README "Load balancer access logs"). Requests are also counted by WAF logs and CloudWatch metrics.
  #checkov:skip=CKV2_AWS_76:The attached WAF has AWSManagedRulesKnownBadInputsRuleSet (the Log4j rules, waf.tf); this check also demands AWSManagedRulesAnonymousIpList, which blocks cloud-hosted and VPN clients, i.e. the server-to-server callers of an inference API.
  #checkov:skip=CKV2_AWS_20:Port 80 redirects to HTTPS whenever certificate_arn is set; only without a certificate does it serve plain HTTP, with the warning in README "HTTP without a certificate".
  name                       = var.name
  load_balancer_type         = "application"
  internal                   = false
  subnets                    = var.public_subnet_ids
  security_groups            = [aws_security_group.alb.id]
  drop_invalid_header_fields = true
  desync_mitigation_mode     = "defensive"
  enable_deletion_protection = var.deletion_protection
  idle_timeout               = local.longest_request_s

  dynamic "access_logs" {
    for_each = var.alb_access_logs_bucket == "" ? [] : [var.alb_access_logs_bucket]
    content {
      bucket  = access_logs.value
      prefix  = var.name
      enabled = true
    }
  }

  lifecycle {
    precondition {
      condition     = length(distinct([for subnet in data.aws_subnet.public : subnet.availability_zone])) >= 2
      error_message = "public_subnet_ids must span at least two availability zones (an ALB requirement)."
    }
  }
}

resource "aws_lb_target_group" "this" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; from there to the task the request stays inside the VPC on the inference port, which the task's security group opens to the load balancer alone. TorchServe in the container serves plain HTTP.
  name        = var.name
  port        = local.inference_port
  protocol    = "HTTP"
  target_type = "ip" # awsvpc: each task has its own address
  vpc_id      = data.aws_vpc.this.id
  # Long enough for any request in flight to finish before ECS sends SIGTERM; the load balancer
  # ends it sooner when none is (predictions take well under a second). main.tf: the stop sequence.
  deregistration_delay = local.longest_request_s

  health_check {
    # /ping: open by design (no token, no API key), answers nothing but health: 200 only once the
    # task's models are READY, 503 while they load and from its drain (HttpRequestHandler.java).
    path                = "/ping"
    matcher             = "200"
    port                = "traffic-port"
    protocol            = "HTTP"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

# The second target group of ECS's blue/green family (CANARY, LINEAR): a release's new tasks
# register here while the running ones stay in the other, and the production listener rule below
# shifts traffic between the two. After a release, production may be either one. Same port, health
# check (/ping) and drain as the first: either may hold the production tasks.
resource "aws_lb_target_group" "alternate" {
  #checkov:skip=CKV_AWS_378:TLS ends at the load balancer; from there to the task the request stays inside the VPC on the inference port, which the task's security group opens to the load balancer alone. TorchServe in the container serves plain HTTP.
  name                 = "${var.name}-alt"
  port                 = local.inference_port
  protocol             = "HTTP"
  target_type          = "ip"
  vpc_id               = data.aws_vpc.this.id
  deregistration_delay = local.longest_request_s

  health_check {
    path                = "/ping"
    matcher             = "200"
    port                = "traffic-port"
    protocol            = "HTTP"
    interval            = 15
    timeout             = 5
    healthy_threshold   = 2
    unhealthy_threshold = 3
  }
}

# The production listener rule: every request (path /*) is forwarded to the two target groups by
# weight. ECS owns the weights (it shifts canary_percent, then the rest, and back on a rollback), so
# terraform creates the rule and then leaves its action alone. On the HTTPS listener, or on the
# plain-HTTP one when there is no certificate (port 80 then serves; with a certificate it only
# redirects, and ECS's blue/green family fails on a listener whose rules mix forward and redirect
# actions). It exists whatever
# deployment_strategy says: with ROLLING it forwards everything to the first target group, as the
# listener's default action does, and switching strategy replaces nothing.
resource "aws_lb_listener_rule" "production" {
  listener_arn = local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http[0].arn
  priority     = 10

  action {
    type = "forward"

    forward {
      target_group {
        arn    = aws_lb_target_group.this.arn
        weight = 100
      }
      target_group {
        arn    = aws_lb_target_group.alternate.arn
        weight = 0
      }
    }
  }

  condition {
    path_pattern {
      values = ["/*"]
    }
  }

  lifecycle {
    ignore_changes = [action]
  }
}

resource "aws_lb_listener" "https" {
  count             = local.https ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = 443
  protocol          = "HTTPS"
  ssl_policy        = var.ssl_policy
  certificate_arn   = var.certificate_arn

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }
}

resource "aws_lb_listener" "http_redirect" {
  count             = local.https ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type = "redirect"

    redirect {
      port        = "443"
      protocol    = "HTTPS"
      status_code = "HTTP_301"
    }
  }
}

resource "aws_lb_listener" "http" {
  #checkov:skip=CKV_AWS_2:Created only when certificate_arn is empty (count); README "HTTP without a certificate" warns that API keys then cross the network in clear text.
  #checkov:skip=CKV_AWS_103:Same listener: plain HTTP exists only without a certificate; the HTTPS listener uses a TLS 1.2+ policy.
  #checkov:skip=CKV_AWS_378:Same listener: plain HTTP on port 80 exists only when certificate_arn is empty; with a certificate port 80 only redirects to HTTPS.
  count             = local.https ? 0 : 1
  load_balancer_arn = aws_lb.this.arn
  port              = 80
  protocol          = "HTTP"

  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.this.arn
  }
}
