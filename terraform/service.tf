# The service: tasks on the GPU capacity provider, in private subnets, behind the load balancer.
resource "aws_ecs_service" "this" {
  name            = var.name
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.this.arn
  desired_count   = var.min_tasks

  # Operators reach TorchServe's management API (127.0.0.1:8081 in the container) through ECS Exec.
  enable_execute_command = var.enable_execute_command

  # Model load on a GPU instance can take a minute or more: load balancer health checks do not
  # count until then. The container's own health check (a READY worker) covers that time.
  health_check_grace_period_seconds = var.health_check_grace_period_seconds

  # Zero-downtime deployments: new tasks start (on an extra GPU instance the capacity provider
  # adds) before old ones stop. A deployment whose tasks never become healthy is rolled back.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  # ECS's own deployment strategy (README "Releases"). CANARY: the new revision's tasks start in
  # the other target group, take canary_percent of the traffic for canary_bake_time_minutes, then
  # all of it; the old tasks stay for deployment_bake_time_minutes, so a rollback until then only
  # moves traffic back. LINEAR: linear_step_percent at a time. ROLLING: tasks replaced in place, in
  # the one target group, without a bake.
  deployment_controller {
    type = "ECS"
  }

  deployment_configuration {
    strategy             = var.deployment_strategy
    bake_time_in_minutes = local.shifts_traffic ? tostring(var.deployment_bake_time_minutes) : null

    dynamic "canary_configuration" {
      for_each = var.deployment_strategy == "CANARY" ? [1] : []
      content {
        canary_percent              = var.canary_percent
        canary_bake_time_in_minutes = tostring(var.canary_bake_time_minutes)
      }
    }

    dynamic "linear_configuration" {
      for_each = var.deployment_strategy == "LINEAR" ? [1] : []
      content {
        step_percent              = var.linear_step_percent
        step_bake_time_in_minutes = tostring(var.linear_step_bake_time_minutes)
      }
    }
  }

  # What judges a release: the 5xx rate, the p99 latency and the model's error rate (monitoring.tf).
  # One of them firing before the release completes rolls it back, as the circuit breaker does for
  # tasks that never become healthy.
  alarms {
    alarm_names = [for name in local.release_judges : aws_cloudwatch_metric_alarm.this[name].alarm_name]
    enable      = true
    rollback    = true
  }

  capacity_provider_strategy {
    capacity_provider = aws_ecs_capacity_provider.gpu.name
    weight            = 1
    base              = 0
  }

  # Tasks across availability zones first.
  ordered_placement_strategy {
    type  = "spread"
    field = "attribute:ecs.availability-zone"
  }

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.task.id]
    assign_public_ip = false
  }

  load_balancer {
    target_group_arn = aws_lb_target_group.this.arn
    container_name   = local.container_name
    container_port   = local.inference_port

    # CANARY and LINEAR: the second target group, the rule whose weights ECS shifts, and the role
    # it shifts them with (alb.tf, iam.tf).
    dynamic "advanced_configuration" {
      for_each = local.shifts_traffic ? [1] : []
      content {
        alternate_target_group_arn = aws_lb_target_group.alternate.arn
        production_listener_rule   = aws_lb_listener_rule.production.arn
        role_arn                   = aws_iam_role.ecs_infrastructure.arn
      }
    }
  }

  enable_ecs_managed_tags = true
  propagate_tags          = "SERVICE"

  lifecycle {
    # After the first apply, scripts/deploy.py rolls out images (new task definition revisions)
    # and service auto scaling sets the task count: an apply must not undo either.
    ignore_changes = [task_definition, desired_count]
  }

  depends_on = [
    aws_lb_listener.https,
    aws_lb_listener.http,
    # ECS accepts a target group only once a load balancer uses it: the alternate one is in this rule.
    aws_lb_listener_rule.production,
    aws_ecs_cluster_capacity_providers.this,
    aws_iam_role_policy.execution,
    # The role must hold its policy before ECS first uses it (and keep it until the service is gone).
    aws_iam_role_policy_attachment.ecs_infrastructure,
  ]
}

locals {
  # The blue/green family: two target groups, traffic shifted by the production listener rule.
  shifts_traffic = contains(["CANARY", "LINEAR"], var.deployment_strategy)
}
