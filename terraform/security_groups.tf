# Descriptions use only the characters EC2 accepts in them (no apostrophes).
# Three security groups, one per hop:
#   clients (allowed_cidrs) --80/443--> ALB --8080--> task ENI (awsvpc)
#   GPU instance: no ingress at all.
# TorchServe's management (8081), metrics (8082) and gRPC (7070, 7071) ports are bound to
# 127.0.0.1 inside the container, never mapped, and no rule here opens them: operators use ECS Exec.

resource "aws_security_group" "alb" {
  name        = "${var.name}-alb"
  description = "${var.name} load balancer: HTTP(S) from allowed_cidrs, to the inference port of the tasks only"
  vpc_id      = data.aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "alb_http" {
  for_each          = toset(var.allowed_cidrs)
  security_group_id = aws_security_group.alb.id
  description       = "HTTP from ${each.value} (redirected to HTTPS when certificate_arn is set)"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_vpc_security_group_ingress_rule" "alb_https" {
  for_each          = local.https ? toset(var.allowed_cidrs) : toset([])
  security_group_id = aws_security_group.alb.id
  description       = "HTTPS from ${each.value}"
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "alb_to_tasks" {
  security_group_id            = aws_security_group.alb.id
  description                  = "Inference port of the tasks (requests and /ping health checks)"
  referenced_security_group_id = aws_security_group.task.id
  ip_protocol                  = "tcp"
  from_port                    = local.inference_port
  to_port                      = local.inference_port
}

resource "aws_security_group" "task" {
  name        = "${var.name}-task"
  description = "${var.name} tasks: inference port from the load balancer only"
  vpc_id      = data.aws_vpc.this.id
}

resource "aws_vpc_security_group_ingress_rule" "task_from_alb" {
  security_group_id            = aws_security_group.task.id
  description                  = "TorchServe inference from the load balancer"
  referenced_security_group_id = aws_security_group.alb.id
  ip_protocol                  = "tcp"
  from_port                    = local.inference_port
  to_port                      = local.inference_port
}

resource "aws_vpc_security_group_egress_rule" "task_https" {
  security_group_id = aws_security_group.task.id
  description       = "HTTPS: image URLs clients send, and the SSM messages channel of ECS Exec"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}

resource "aws_vpc_security_group_egress_rule" "task_http" {
  security_group_id = aws_security_group.task.id
  description       = "HTTP: image URLs clients send (the handler refuses private and metadata addresses)"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 80
  to_port           = 80
}

resource "aws_security_group" "instance" {
  name        = "${var.name}-gpu-instance"
  description = "${var.name} GPU container instances: no ingress; HTTPS out for the ECS agent, image pulls, logs and secrets"
  vpc_id      = data.aws_vpc.this.id
}

resource "aws_vpc_security_group_egress_rule" "instance_https" {
  security_group_id = aws_security_group.instance.id
  description       = "HTTPS to ECS, ECR and S3 (image layers), CloudWatch Logs, Secrets Manager"
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
}
