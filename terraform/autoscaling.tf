# Service auto scaling: keep about requests_per_task_target requests per task per minute, between
# min_tasks and max_tasks. Each new task needs a GPU; the capacity provider (capacity.tf) adds
# GPU instances for tasks that cannot be placed, and removes idle ones. README "Scaling and its
# cost" has the numbers; scripts/scaling.py plays a traffic trace through this policy.

resource "aws_appautoscaling_target" "service" {
  service_namespace  = "ecs"
  resource_id        = "service/${aws_ecs_cluster.this.name}/${aws_ecs_service.this.name}"
  scalable_dimension = "ecs:service:DesiredCount"
  min_capacity       = var.min_tasks
  max_capacity       = var.max_tasks

  lifecycle {
    # The service spreads its tasks across zones (service.tf): two tasks are in two zones only if
    # the instances can be.
    precondition {
      condition     = var.min_tasks < 2 || length(distinct([for subnet in data.aws_subnet.private : subnet.availability_zone])) >= 2
      error_message = "min_tasks of 2 or more puts tasks in two availability zones: private_subnet_ids must span at least two zones (or set min_tasks = 1 and accept a single zone)."
    }
  }
}

resource "aws_appautoscaling_policy" "requests_per_task" {
  name               = "${var.name}-requests-per-task"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service.service_namespace
  resource_id        = aws_appautoscaling_target.service.resource_id
  scalable_dimension = aws_appautoscaling_target.service.scalable_dimension

  target_tracking_scaling_policy_configuration {
    target_value = var.requests_per_task_target
    # Out: no second scale-out on points from before the first one counted. The metric below
    # divides by desired tasks, so an added task counts as soon as CloudWatch has the minute
    # (a minute or two); divided by running tasks it would count only once its GPU instance has
    # booted and joined and it has pulled the image (about 10 minutes), and scale-outs repeated
    # on the way would overshoot. In: slowly, after target tracking's 15 quiet minutes.
    scale_out_cooldown = var.scale_out_cooldown_seconds
    scale_in_cooldown  = var.scale_in_cooldown_seconds

    # Requests per task per minute = the requests to both target groups / the service's desired
    # task count, by metric math:
    # - FILL(..., 0): the load balancer reports no RequestCount in a minute without requests. With
    #   no data the alarms are INSUFFICIENT_DATA and target tracking never scales in; with FILL a
    #   quiet minute is 0 and the service returns to min_tasks.
    # - Both target groups: ECS's blue/green deployments (CANARY, LINEAR) move production between
    #   them, and during a canary both serve. One group's per-target metric (ALBRequestCountPerTarget)
    #   sees its share only, and nothing at all once production has moved to the other group.
    # - Desired, not running, tasks: target tracking sets ceil(desired x metric / target), exact when
    #   the metric divides by desired. RunningTaskCount lags desired by minutes on a GPU fleet, and
    #   during a deployment counts both revisions' tasks (up to twice desired) while desired stays
    #   the service's count. (Application Auto Scaling does not scale in during ECS deployments.)
    customized_metric_specification {
      metrics {
        id          = "requests"
        label       = "Requests to the production target group"
        return_data = false

        metric_stat {
          stat = "Sum"

          metric {
            namespace   = "AWS/ApplicationELB"
            metric_name = "RequestCount"

            dimensions {
              name  = "LoadBalancer"
              value = aws_lb.this.arn_suffix
            }

            dimensions {
              name  = "TargetGroup"
              value = aws_lb_target_group.this.arn_suffix
            }
          }
        }
      }

      metrics {
        id          = "requests_alternate"
        label       = "Requests to the alternate target group"
        return_data = false

        metric_stat {
          stat = "Sum"

          metric {
            namespace   = "AWS/ApplicationELB"
            metric_name = "RequestCount"

            dimensions {
              name  = "LoadBalancer"
              value = aws_lb.this.arn_suffix
            }

            dimensions {
              name  = "TargetGroup"
              value = aws_lb_target_group.alternate.arn_suffix
            }
          }
        }
      }

      # Container Insights (ecs_cluster.tf) publishes it every minute.
      metrics {
        id          = "tasks"
        label       = "The service's desired tasks"
        return_data = false

        metric_stat {
          stat = "Average"

          metric {
            namespace   = "ECS/ContainerInsights"
            metric_name = "DesiredTaskCount"

            dimensions {
              name  = "ClusterName"
              value = aws_ecs_cluster.this.name
            }

            dimensions {
              name  = "ServiceName"
              value = aws_ecs_service.this.name
            }
          }
        }
      }

      metrics {
        id          = "requests_per_task"
        label       = "Requests per task per minute"
        expression  = "(FILL(requests, 0) + FILL(requests_alternate, 0)) / tasks"
        return_data = true
      }
    }
  }
}
