# The task: one container, one GPU, on EC2 (Fargate has no GPUs), in awsvpc mode so the task has
# its own network interface and security group.

locals {
  # A GPU task that finds no usable GPU fails its health check and is replaced (require_cuda), the
  # entrypoint's drain fits stopTimeout, and each request's log line carries its metrics
  # (monitoring.tf); var.environment adds settings (and may override these).
  environment = merge({
    OBJDETECT_REQUIRE_CUDA         = "true"
    OBJDETECT_DRAIN_TIMEOUT_S      = tostring(local.drain_timeout_s)
    OBJDETECT_CLOUDWATCH_NAMESPACE = local.metrics_namespace
  }, var.environment, local.release_environment)

  # The release the task serves (README "Model releases"): the entrypoint downloads its manifest and
  # archives into /tmp, verifies every hash and only then reports healthy. Without one the task
  # serves the archives built into the image. scripts/models.py release changes only these two.
  release_environment = var.model_release == null ? {} : {
    OBJDETECT_RELEASE        = var.model_release.uri
    OBJDETECT_RELEASE_SHA256 = var.model_release.sha256
  }

  # In-memory scratch (tmpfs, MiB): what is written there counts against the container's memory.
  scratch_mib = var.scratch_mib
  home_mib    = 256
  # What the task keeps for TorchServe itself besides the tmpfs mounts: the Java frontend (up to
  # 2 GiB) and at least one model worker (1-3 GiB on a GPU).
  torchserve_min_mib = 4096

  # Root file system: read-only unless ECS Exec is on. AWS does not support ECS Exec with a
  # read-only root (its SSM agent writes under /var/lib/amazon and /var/log/amazon). With Exec on,
  # the process still cannot change the image's files: it runs as uid 10001 and everything outside
  # /tmp and /home/objdetect belongs to root. README "Read-only root file system".
  readonly_root = !var.enable_execute_command

  container = {
    name      = local.container_name
    image     = "${aws_ecr_repository.this.repository_url}:${var.image_tag}"
    essential = true
    user      = "10001:10001"
    cpu       = var.task_cpu
    memory    = var.task_memory

    resourceRequirements = [{ type = "GPU", value = "1" }]

    # Only the inference port. Management (8081) and metrics (8082) stay on the container's loopback.
    portMappings = [{ containerPort = local.inference_port, hostPort = local.inference_port, protocol = "tcp" }]

    environment = [for key, value in local.environment : { name = key, value = value }]
    secrets     = [{ name = "OBJDETECT_API_KEYS", valueFrom = aws_secretsmanager_secret.api_keys.arn }]

    readonlyRootFilesystem = local.readonly_root
    privileged             = false

    linuxParameters = {
      # tini as PID 1: forwards SIGTERM to the entrypoint (which stops TorchServe's whole process
      # group in about 3 s) and reaps zombies.
      initProcessEnabled = true
      # Writable scratch space, in memory (world-writable, sticky, like /tmp): the release's
      # archives, TorchServe's temp dir (pid file, logs, unpacked model archives), the JVM's and
      # CUDA's caches. Needed when the root is read-only; harmless otherwise. "exec": Docker's tmpfs
      # default is noexec, and the JVM loads Netty's native transport library from its temp dir.
      tmpfs = [
        { containerPath = "/tmp", size = local.scratch_mib, mountOptions = ["rw", "exec", "nosuid", "nodev"] },
        { containerPath = "/home/objdetect", size = local.home_mib, mountOptions = ["rw", "exec", "nosuid", "nodev"] },
      ]
      capabilities = {
        # Neither TorchServe nor ECS Exec's agent uses these.
        drop = ["NET_RAW", "MKNOD", "SYS_CHROOT", "SETFCAP"]
      }
    }

    # Healthy means every model version registered with a READY worker, and no drain (as /ping).
    healthCheck = {
      command     = ["CMD", "python", "/opt/objdetect/scripts/server.py", "--check", var.model_name]
      interval    = 15
      timeout     = 5
      retries     = 3
      startPeriod = min(var.health_check_grace_period_seconds, 300) # ECS allows at most 300
    }

    # SIGTERM, then SIGKILL after this many seconds: the drain and TorchServe's stop fit (main.tf).
    stopTimeout = local.stop_timeout_s

    ulimits = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]

    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service.name
        awslogs-region        = var.region
        awslogs-stream-prefix = var.name
        # A slow CloudWatch must never stall inference on a blocked stdout.
        mode            = "non-blocking"
        max-buffer-size = "25m"
      }
    }
  }
}

resource "aws_ecs_task_definition" "this" {
  #checkov:skip=CKV_AWS_336:The root is read-only whenever enable_execute_command is false. With it true (the default, how operators reach the management API) AWS does not support a read-only root for ECS Exec; the container runs as uid 10001, which can write only /tmp and /home/objdetect (tmpfs).
  family                   = var.name
  requires_compatibilities = ["EC2"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_cpu)
  memory                   = tostring(var.task_memory)
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task.arn
  container_definitions    = jsonencode([local.container])

  # scripts/deploy.py registers later revisions and rolls back to earlier ones; ECS cannot update a
  # service to a deregistered (INACTIVE) revision, so terraform leaves old revisions registered.
  skip_destroy = true

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  lifecycle {
    precondition {
      condition     = length(data.aws_ec2_instance_type.gpu.gpus) > 0
      error_message = "instance_type ${var.instance_type} has no GPU."
    }
    precondition {
      # The image is CUDA: an AMD GPU (g4ad) never gets a READY worker (require_cuda).
      condition     = alltrue([for gpu in data.aws_ec2_instance_type.gpu.gpus : gpu.manufacturer == "NVIDIA"])
      error_message = "instance_type ${var.instance_type} has ${join(", ", distinct([for gpu in data.aws_ec2_instance_type.gpu.gpus : gpu.manufacturer]))} GPUs; the image needs NVIDIA (CUDA)."
    }
    precondition {
      # The image and the task definition's runtime_platform are X86_64; Graviton types (g5g) are arm64.
      condition     = contains(data.aws_ec2_instance_type.gpu.supported_architectures, "x86_64")
      error_message = "instance_type ${var.instance_type} runs ${join(", ", data.aws_ec2_instance_type.gpu.supported_architectures)}; the image and the task are x86_64."
    }
    precondition {
      condition     = var.task_cpu <= data.aws_ec2_instance_type.gpu.default_vcpus * 1024
      error_message = "task_cpu ${var.task_cpu} exceeds the ${data.aws_ec2_instance_type.gpu.default_vcpus * 1024} CPU units of a ${var.instance_type}."
    }
    precondition {
      condition     = var.task_memory <= data.aws_ec2_instance_type.gpu.memory_size - 2048
      error_message = "task_memory ${var.task_memory} MiB leaves less than 2 GiB of a ${var.instance_type}'s ${data.aws_ec2_instance_type.gpu.memory_size} MiB for the OS, the ECS agent and Docker: the task would never be placed."
    }
    precondition {
      # tmpfs pages are charged to the container's memory limit: full scratch must still leave
      # TorchServe its frontend and a worker, or the kernel kills the container mid-release.
      condition     = local.scratch_mib + local.home_mib + local.torchserve_min_mib <= var.task_memory
      error_message = "scratch_mib ${var.scratch_mib} MiB of /tmp plus ${local.home_mib} MiB of /home/objdetect (both in memory) leave less than ${local.torchserve_min_mib} MiB of task_memory ${var.task_memory} MiB for TorchServe: lower scratch_mib or raise task_memory."
    }
    precondition {
      # The task role reads this deployment's model store only (iam.tf).
      condition     = var.model_release == null ? true : startswith(var.model_release.uri, "s3://${aws_s3_bucket.models.bucket}/releases/")
      error_message = "model_release.uri must be a release in this deployment's model store, s3://${aws_s3_bucket.models.bucket}/releases/<id>.json: the task role can read no other."
    }
  }
}
