# What tells an operator the service is unwell before its users do: alarms to an SNS topic, and a
# dashboard. The model's own metrics (requests by outcome, stage latencies, GPU) come from each
# request's JSON log line, which is in CloudWatch's embedded metric format (the task sets
# OBJDETECT_CLOUDWATCH_NAMESPACE): CloudWatch Logs extracts them, percentiles included, with no
# metrics port opened and no agent beside the model (docs/operations.md "Observability" says why).

locals {
  metrics_namespace = var.name

  # Production traffic may run through either target group (alb.tf: a canary or linear release
  # moves it to the other one), so what judges traffic reads the whole load balancer, and what
  # counts targets reads both groups.
  load_balancer   = tomap({ LoadBalancer = aws_lb.this.arn_suffix })
  target_group    = tomap({ LoadBalancer = aws_lb.this.arn_suffix, TargetGroup = aws_lb_target_group.this.arn_suffix })
  alternate_group = tomap({ LoadBalancer = aws_lb.this.arn_suffix, TargetGroup = aws_lb_target_group.alternate.arn_suffix })
  # The service's name, not aws_ecs_service.this.name: the service names the judges below among its
  # alarms, so the alarms must not depend on it.
  ecs_service = tomap({ ClusterName = aws_ecs_cluster.this.name, ServiceName = var.name })
  model       = tomap({ model = var.model_name })

  # The alarms that judge a release (service.tf, `alarms`): ECS rolls a release back when one of them
  # fires before the release completes. Each reads every request, the canary's among them, each
  # minute; no traffic is not a breach; 3 breaching minutes of 5 fire it, within a canary bake
  # (canary_bake_time_minutes is at least 5).
  release_judges = ["alb-5xx-rate", "p99-response-time", "model-error-rate"]

  gpu_memory_mib = min([for gpu in data.aws_ec2_instance_type.gpu.gpus : gpu.memory_size]...)

  # Each alarm: an expression over metrics [id, namespace, name, statistic, dimensions], judged
  # each minute; it fires when `datapoints` of the last `minutes` breach the threshold. No data
  # (no traffic) is not a breach.
  alarms = {
    alb-5xx-rate = {
      description = "More than ${var.alarm_5xx_percent}% of requests got a 5xx from the load balancer or a task."
      expression  = "100 * (FILL(m1, 0) + FILL(m2, 0)) / m3"
      threshold   = var.alarm_5xx_percent
      minutes     = 5
      datapoints  = 3
      metrics = [
        ["m1", "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count", "Sum", local.load_balancer],
        ["m2", "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "Sum", local.load_balancer],
        ["m3", "AWS/ApplicationELB", "RequestCount", "Sum", local.load_balancer],
      ]
    }
    p99-response-time = {
      description = "The 99th percentile of target response time is above ${var.alarm_p99_response_seconds} s."
      expression  = "m1"
      threshold   = var.alarm_p99_response_seconds
      minutes     = 5
      datapoints  = 3
      metrics     = [["m1", "AWS/ApplicationELB", "TargetResponseTime", "p99", local.load_balancer]]
    }
    unhealthy-hosts = {
      description = "A task has failed the load balancer's health check for 3 minutes."
      expression  = "MAX([FILL(m1, 0), FILL(m2, 0)])"
      threshold   = 0
      minutes     = 3
      datapoints  = 3
      metrics = [
        ["m1", "AWS/ApplicationELB", "UnHealthyHostCount", "Maximum", local.target_group],
        ["m2", "AWS/ApplicationELB", "UnHealthyHostCount", "Maximum", local.alternate_group],
      ]
    }
    tasks-below-desired = {
      # 10 minutes: a deployment or scale-out may wait minutes for a GPU instance to join.
      description = "Fewer tasks have run than desired for 10 minutes."
      expression  = "m1 - m2"
      threshold   = 0
      minutes     = 10
      datapoints  = 10
      metrics = [
        ["m1", "ECS/ContainerInsights", "DesiredTaskCount", "Maximum", local.ecs_service],
        ["m2", "ECS/ContainerInsights", "RunningTaskCount", "Minimum", local.ecs_service],
      ]
    }
    model-error-rate = {
      description = "More than ${var.alarm_model_error_percent}% of the model's requests failed on the service's side (5xx)."
      expression  = "100 * m1 / m2"
      threshold   = var.alarm_model_error_percent
      minutes     = 5
      datapoints  = 3
      metrics = [
        ["m1", local.metrics_namespace, "server_errors", "Sum", local.model],
        ["m2", local.metrics_namespace, "requests", "Sum", local.model],
      ]
    }
    predict-p99 = {
      description = "The 99th percentile of the forward pass is above ${var.alarm_predict_p99_ms} ms."
      expression  = "m1"
      threshold   = var.alarm_predict_p99_ms
      minutes     = 5
      datapoints  = 3
      metrics     = [["m1", local.metrics_namespace, "predict_ms", "p99", local.model]]
    }
    gpu-memory = {
      description = "A worker holds more than 90% of its GPU's memory: the next large batch may not fit."
      expression  = "m1"
      threshold   = floor(0.9 * local.gpu_memory_mib)
      minutes     = 5
      datapoints  = 3
      metrics     = [["m1", local.metrics_namespace, "gpu_memory_mb", "Maximum", local.model]]
    }
    gpu-utilization = {
      description = "The GPUs have been over 90% busy for 15 minutes: more tasks (max_tasks) or instances are needed."
      expression  = "m1"
      threshold   = 90
      minutes     = 15
      datapoints  = 15
      metrics     = [["m1", local.metrics_namespace, "gpu_utilization_percent", "Average", local.model]]
    }
  }
}

resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.this.arn
}

resource "aws_sns_topic_policy" "alarms" {
  arn = aws_sns_topic.alarms.arn
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "ThisAccountsAlarmsPublish"
      Effect    = "Allow"
      Principal = { Service = "cloudwatch.amazonaws.com" }
      Action    = "sns:Publish"
      Resource  = aws_sns_topic.alarms.arn
      Condition = {
        ArnLike = { "aws:SourceArn" = "arn:${local.partition}:cloudwatch:${var.region}:${local.account_id}:alarm:${var.name}-*" }
      }
    }]
  })
}

resource "aws_sns_topic_subscription" "alarm_email" {
  count     = var.alarm_email == "" ? 0 : 1
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each = local.alarms

  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.description
  comparison_operator = "GreaterThanThreshold"
  threshold           = each.value.threshold
  evaluation_periods  = each.value.minutes
  datapoints_to_alarm = each.value.datapoints
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]

  metric_query {
    id          = "alarm"
    expression  = each.value.expression
    label       = each.key
    return_data = true
  }

  dynamic "metric_query" {
    for_each = each.value.metrics
    content {
      id = metric_query.value[0]
      metric {
        namespace   = metric_query.value[1]
        metric_name = metric_query.value[2]
        stat        = metric_query.value[3]
        dimensions  = metric_query.value[4]
        period      = 60
      }
    }
  }
}

# Throughput, latency percentiles, errors by code, stage latencies, tasks and GPU, on one page.
locals {
  stages = ["fetch_ms", "decode_ms", "transform_ms", "predict_ms", "postprocess_ms"]

  # Unhealthy tasks in either target group (a release's new tasks are in the other one).
  unhealthy_hosts_lines = [for group in [aws_lb_target_group.this, aws_lb_target_group.alternate] : [
    "AWS/ApplicationELB", "UnHealthyHostCount", "LoadBalancer", aws_lb.this.arn_suffix, "TargetGroup", group.arn_suffix,
    { stat = "Maximum", label = "unhealthy (${group.name})" },
  ]]

  # [title, metrics in CloudWatch's dashboard form]
  dashboard_widgets = [
    ["Requests per minute", [
      ["AWS/ApplicationELB", "RequestCount", "LoadBalancer", aws_lb.this.arn_suffix, { stat = "Sum", label = "load balancer" }],
      [local.metrics_namespace, "requests", "model", var.model_name, { stat = "Sum", label = "model" }],
    ]],
    ["Response time (s), load balancer to task", [
      for p in ["p50", "p90", "p99"] : ["AWS/ApplicationELB", "TargetResponseTime", "LoadBalancer", aws_lb.this.arn_suffix,
      { stat = p, label = p }]
    ]],
    ["Errors by code (requests per minute)", [
      [{ expression = "SEARCH('{${local.metrics_namespace},model,outcome} MetricName=\"requests\" NOT outcome=\"ok\"', 'Sum', 60)", label = "", id = "codes" }],
      ["AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count", "LoadBalancer", aws_lb.this.arn_suffix, { stat = "Sum", label = "load balancer 5xx" }],
    ]],
    ["Stage latency p50 (ms)", [
      for stage in local.stages : [local.metrics_namespace, stage, "model", var.model_name, { stat = "p50", label = stage }]
    ]],
    ["Stage latency p99 (ms)", [
      for stage in local.stages : [local.metrics_namespace, stage, "model", var.model_name, { stat = "p99", label = stage }]
    ]],
    ["Tasks", concat([
      ["ECS/ContainerInsights", "RunningTaskCount", "ClusterName", aws_ecs_cluster.this.name, "ServiceName", aws_ecs_service.this.name, { stat = "Minimum", label = "running" }],
      ["ECS/ContainerInsights", "DesiredTaskCount", "ClusterName", aws_ecs_cluster.this.name, "ServiceName", aws_ecs_service.this.name, { stat = "Maximum", label = "desired" }],
    ], local.unhealthy_hosts_lines)],
    ["GPU", [
      [local.metrics_namespace, "gpu_utilization_percent", "model", var.model_name, { stat = "Average", label = "utilization %" }],
      [local.metrics_namespace, "gpu_memory_mb", "model", var.model_name, { stat = "Maximum", label = "memory MiB", yAxis = "right" }],
    ]],
  ]
}

resource "aws_cloudwatch_dashboard" "this" {
  dashboard_name = var.name
  dashboard_body = jsonencode({
    widgets = [for i, widget in local.dashboard_widgets : {
      type   = "metric"
      x      = (i % 2) * 12
      y      = floor(i / 2) * 6
      width  = 12
      height = 6
      properties = {
        title   = widget[0]
        metrics = widget[1]
        region  = var.region
        period  = 60
        view    = "timeSeries"
        stacked = false
      }
    }]
  })
}
