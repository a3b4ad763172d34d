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
    aws_ecs_cluster_capacity_providers.this,
    aws_iam_role_policy.execution,
  ]
}
