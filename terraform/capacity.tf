# GPU capacity: an Auto Scaling group of ECS GPU-optimized Amazon Linux 2023 instances, grown and
# shrunk by an ECS capacity provider with managed scaling as tasks need GPUs (one GPU per task).

data "aws_ssm_parameter" "gpu_ami" {
  name = "/aws/service/ecs/optimized-ami/amazon-linux-2023/gpu/recommended/image_id"
}

data "aws_ami" "gpu" {
  owners = ["amazon"]

  filter {
    name   = "image-id"
    values = [data.aws_ssm_parameter.gpu_ami.insecure_value]
  }
}

# What the instance type offers, to check the task fits on one instance (task.tf preconditions).
data "aws_ec2_instance_type" "gpu" {
  instance_type = var.instance_type
}

resource "aws_launch_template" "gpu" {
  name_prefix            = "${var.name}-gpu-"
  description            = "${var.name} ECS GPU container instances"
  image_id               = data.aws_ami.gpu.id
  instance_type          = var.instance_type
  vpc_security_group_ids = [aws_security_group.instance.id]
  ebs_optimized          = true
  update_default_version = true

  iam_instance_profile {
    arn = aws_iam_instance_profile.instance.arn
  }

  # IMDSv2 only, and one hop: containers cannot reach the instance's credentials (awsvpc tasks are
  # also blocked from IMDS by ECS_AWSVPC_BLOCK_IMDS below).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "disabled"
  }

  block_device_mappings {
    device_name = data.aws_ami.gpu.root_device_name

    ebs {
      volume_size           = var.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  monitoring {
    enabled = true
  }

  # Joins the cluster with GPU support. Image tags are immutable, so a cached image is the image:
  # pull once per instance. No secrets here (user data is readable by anyone who can describe it).
  user_data = base64encode(<<-EOT
    #!/bin/bash
    cat >> /etc/ecs/ecs.config <<'CONFIG'
    ECS_CLUSTER=${var.name}
    ECS_ENABLE_GPU_SUPPORT=true
    ECS_AWSVPC_BLOCK_IMDS=true
    ECS_RESERVED_MEMORY=256
    ECS_IMAGE_PULL_BEHAVIOR=prefer-cached
    ECS_ENABLE_CONTAINER_METADATA=true
    ECS_WARM_POOLS_CHECK=true
    CONFIG
  EOT
  )

  tag_specifications {
    resource_type = "instance"
    tags          = merge({ Name = "${var.name}-gpu", Project = var.name }, var.tags)
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge({ Name = "${var.name}-gpu", Project = var.name }, var.tags)
  }
}

resource "aws_autoscaling_group" "gpu" {
  name_prefix         = "${var.name}-gpu-"
  vpc_zone_identifier = var.private_subnet_ids
  min_size            = var.instance_min_count
  max_size            = var.instance_max_count
  health_check_type   = "EC2"
  # ECS decides which instances to stop (managed termination protection): the group must not
  # scale in an instance that still runs a task.
  protect_from_scale_in = true
  # terraform destroy: delete the group with its (scale-in protected) instances, and its warm
  # pool, instead of waiting forever for them to drain.
  force_delete           = true
  force_delete_warm_pool = true

  launch_template {
    id      = aws_launch_template.gpu.id
    version = aws_launch_template.gpu.latest_version
  }

  # Spare capacity, stopped: every instance the group may still add (instance_max_count less the
  # running ones) waits initialized and stopped, paying for its root volume only; a scale-out
  # starts one instead of launching a fresh one. The ECS agent stays out of the cluster while an
  # instance is in the pool (ECS_WARM_POOLS_CHECK above). ECS does not allow returning instances to
  # the pool on scale-in (reuse_on_scale_in): a removed instance is replaced in the pool by a new one.
  dynamic "warm_pool" {
    for_each = var.warm_pool ? [1] : []

    content {
      pool_state = "Stopped"
    }
  }

  tag {
    key                 = "AmazonECSManaged"
    value               = "true"
    propagate_at_launch = true
  }

  tag {
    key                 = "Name"
    value               = "${var.name}-gpu"
    propagate_at_launch = true
  }

  lifecycle {
    # The capacity provider sets the desired count.
    ignore_changes = [desired_capacity]
  }
}

resource "aws_ecs_capacity_provider" "gpu" {
  name = "${var.name}-gpu"

  auto_scaling_group_provider {
    auto_scaling_group_arn         = aws_autoscaling_group.gpu.arn
    managed_termination_protection = "ENABLED"
    managed_draining               = "ENABLED"

    # Spare capacity, running: a target below 100 keeps ceil(tasks x 100 / target) instances
    # (README "Scaling and its cost").
    managed_scaling {
      status                    = "ENABLED"
      target_capacity           = var.target_capacity_percent
      minimum_scaling_step_size = 1
      maximum_scaling_step_size = 2
      instance_warmup_period    = 300
    }
  }
}
