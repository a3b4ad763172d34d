# ---------------------------------------------------------------------------------------------
# Where and what
# ---------------------------------------------------------------------------------------------

variable "region" {
  description = "AWS region to deploy to (GPU instance types are not offered in every region or zone)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must look like an AWS region name, e.g. us-east-1."
  }
}

variable "name" {
  description = "Name of the deployment: used for the ECR repository, cluster, service, load balancer, roles and log groups."
  type        = string
  default     = "objdetect"

  validation {
    # The ALB and target group names allow 32 characters; capacity provider names may not start
    # with aws, ecs or fargate.
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name)) && !can(regex("^(aws|ecs|fargate)", var.name))
    error_message = "name must be 3-24 characters of lowercase letters, digits and hyphens, start with a letter, and not start with aws, ecs or fargate."
  }
}

variable "tags" {
  description = "Extra tags for every resource (added to Project and ManagedBy)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Networking: an existing VPC (README "Networking" says what the subnets need)
# ---------------------------------------------------------------------------------------------

variable "vpc_id" {
  description = "ID of the existing VPC to deploy into."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id must be a VPC ID such as vpc-0123456789abcdef0."
  }
}

variable "public_subnet_ids" {
  description = "Public subnets (route to an internet gateway) for the load balancer, in at least two availability zones."
  type        = list(string)

  validation {
    condition     = length(var.public_subnet_ids) >= 2 && alltrue([for id in var.public_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", id))])
    error_message = "public_subnet_ids needs at least two subnet IDs (subnet-...) in different availability zones: an ALB requires two zones."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets for the GPU instances and the tasks' network interfaces; they need outbound HTTPS through a NAT gateway or VPC endpoints (ECR, S3, CloudWatch Logs, Secrets Manager, ECS, SSM messages)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 1 && alltrue([for id in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", id))])
    error_message = "private_subnet_ids needs at least one subnet ID (subnet-...); two or more zones give the service zone redundancy."
  }
}

variable "allowed_cidrs" {
  description = "IPv4 CIDR blocks allowed to reach the load balancer on ports 80 and 443. [\"0.0.0.0/0\"] makes the service public (then keep API keys in the secret)."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidrs) > 0 && alltrue([for cidr in var.allowed_cidrs : can(cidrhost(cidr, 0)) && !strcontains(cidr, ":")])
    error_message = "allowed_cidrs needs at least one IPv4 CIDR block, e.g. 203.0.113.0/24."
  }
}

# ---------------------------------------------------------------------------------------------
# Load balancer
# ---------------------------------------------------------------------------------------------

variable "certificate_arn" {
  description = "ACM certificate ARN for the HTTPS listener. Empty: a plain HTTP listener only (API keys would cross the network in clear text; see README)."
  type        = string
  default     = ""

  validation {
    condition     = var.certificate_arn == "" || can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/[0-9a-f-]+$", var.certificate_arn))
    error_message = "certificate_arn must be empty or an ACM certificate ARN (arn:aws:acm:REGION:ACCOUNT:certificate/ID)."
  }
}

variable "ssl_policy" {
  description = "ALB security policy for the HTTPS listener: TLS 1.2 or newer only."
  type        = string
  default     = "ELBSecurityPolicy-TLS13-1-2-2021-06"

  validation {
    condition     = can(regex("^ELBSecurityPolicy-(TLS13-1-[23]|TLS-1-2|FS-1-2)", var.ssl_policy))
    error_message = "ssl_policy must be a TLS 1.2+ policy (ELBSecurityPolicy-TLS13-1-2-*, ELBSecurityPolicy-TLS13-1-3-*, ELBSecurityPolicy-TLS-1-2-*, ELBSecurityPolicy-FS-1-2-*)."
  }
}

variable "deletion_protection" {
  description = "Protect the load balancer from deletion. Set to false and apply before terraform destroy."
  type        = bool
  default     = true
}

variable "alb_access_logs_bucket" {
  description = "Existing S3 bucket for ALB access logs (its policy must let the region's ELB log delivery write). Empty: no access logs."
  type        = string
  default     = ""

  validation {
    condition     = var.alb_access_logs_bucket == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.alb_access_logs_bucket))
    error_message = "alb_access_logs_bucket must be empty or an S3 bucket name."
  }
}

variable "waf_rate_limit" {
  description = "Requests per client IP per 5 minutes above which the WAF blocks that IP."
  type        = number
  default     = 3000

  validation {
    condition     = var.waf_rate_limit >= 100 && var.waf_rate_limit <= 2000000000
    error_message = "waf_rate_limit must be between 100 and 2,000,000,000 (AWS WAF's bounds)."
  }
}

# ---------------------------------------------------------------------------------------------
# Container image and task
# ---------------------------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the image in this deployment's ECR repository (scripts/push.py pushes the short git commit). After the first apply, scripts/deploy.py rolls out new tags."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$", var.image_tag)) && var.image_tag != "latest"
    error_message = "image_tag must be a valid image tag (up to 128 of A-Z a-z 0-9 _ . -) and not 'latest': tags are immutable, deploy a commit."
  }
}

variable "model_name" {
  description = "Model name the container serves (the image's CMD registers detector=detector-v1.0.mar; a release must include it); the container health check waits for a READY worker of it."
  type        = string
  default     = "detector"

  validation {
    condition     = can(regex("^[A-Za-z0-9][A-Za-z0-9_-]*$", var.model_name))
    error_message = "model_name must be letters, digits, _ and -."
  }
}

variable "task_cpu" {
  description = "CPU units for the task (1024 = 1 vCPU). Default: 3.5 of a g4dn.xlarge's 4 vCPUs, the rest for the ECS agent and Docker."
  type        = number
  default     = 3584

  validation {
    condition     = var.task_cpu >= 1024 && var.task_cpu <= 196608
    error_message = "task_cpu must be between 1024 and 196608 CPU units."
  }
}

variable "task_memory" {
  description = "Memory (MiB) for the task. Default: 14 GiB of a g4dn.xlarge's 16 GiB, leaving 2 GiB for the OS, the ECS agent and Docker."
  type        = number
  default     = 14336

  validation {
    condition     = var.task_memory >= 4096
    error_message = "task_memory must be at least 4096 MiB (the Java frontend takes up to 2 GiB, each worker about 1-3 GiB)."
  }
}

variable "model_release" {
  description = "The release every task serves: its manifest's s3:// URI in the model store (output model_store, then /releases/<id>.json) and the manifest's SHA-256. scripts/models.py release rolls releases out without terraform; set this to the current release (scripts/models.py status prints it) so that a revision terraform registers serves it too. null: the models built into the image."
  type = object({
    uri    = string
    sha256 = string
  })
  default = null

  validation {
    condition = var.model_release == null ? true : (
      can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]/releases/[^/]+\\.json$", var.model_release.uri))
      && can(regex("^[0-9a-f]{64}$", var.model_release.sha256))
    )
    error_message = "model_release must be null or { uri = \"s3://BUCKET/releases/ID.json\", sha256 = 64 lowercase hex digits }."
  }
}

variable "scratch_mib" {
  description = "Size (MiB) of the container's /tmp, an in-memory tmpfs: the release's archives (two versions of a ~350 MB archive), TorchServe's unpacked copies of them, its logs and the JVM's temp files. Written pages count against task_memory."
  type        = number
  default     = 4096

  validation {
    condition     = var.scratch_mib >= 1024 && floor(var.scratch_mib) == var.scratch_mib
    error_message = "scratch_mib must be a whole number of MiB, at least 1024."
  }
}

variable "environment" {
  description = "Extra OBJDETECT_<SETTING> environment values for the container, e.g. { OBJDETECT_MAX_PIXELS = \"20000000\" }. API keys never go here: they come from the secret."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for key in keys(var.environment) : can(regex("^OBJDETECT_[A-Z0-9_]+$", key)) && key != "OBJDETECT_API_KEYS" && !contains(["OBJDETECT_RELEASE", "OBJDETECT_RELEASE_SHA256"], key)])
    error_message = "environment keys must be OBJDETECT_<SETTING> names; OBJDETECT_API_KEYS comes from Secrets Manager, and OBJDETECT_RELEASE(_SHA256) from model_release, never from here."
  }
}

variable "enable_execute_command" {
  description = "ECS Exec into the container: how operators reach TorchServe's management API on 127.0.0.1:8081. ECS Exec needs a writable root file system, so false also makes the root file system read-only."
  type        = bool
  default     = true
}

variable "health_check_grace_period_seconds" {
  description = "Seconds the service ignores load balancer health checks after a task starts (model load on a GPU can take a minute or more)."
  type        = number
  default     = 120

  validation {
    condition     = var.health_check_grace_period_seconds >= 0 && var.health_check_grace_period_seconds <= 2147483647
    error_message = "health_check_grace_period_seconds must not be negative."
  }
}

# ---------------------------------------------------------------------------------------------
# GPU capacity
# ---------------------------------------------------------------------------------------------

variable "instance_type" {
  description = "GPU instance type for the ECS container instances (one GPU per task)."
  type        = string
  default     = "g4dn.xlarge"

  validation {
    # The image is CUDA on x86_64: g4ad has AMD GPUs, and a family with a g after its generation
    # (g5g) is Graviton, arm64. task.tf checks the type's GPUs and architectures themselves too.
    condition     = can(regex("^(g[4-9][a-z]*|p[3-9][a-z]*)\\.[0-9a-z]+$", var.instance_type)) && !can(regex("^g4ad\\.", var.instance_type)) && !can(regex("^[gp][0-9]+[a-z]*g[a-z]*\\.", var.instance_type))
    error_message = "instance_type must be an NVIDIA GPU instance type on x86_64 (g4dn, g5, g6, g6e, p3, p4d, p5, ...), e.g. g4dn.xlarge; not g4ad (AMD GPUs) nor a Graviton type such as g5g (arm64)."
  }
}

variable "root_volume_size_gb" {
  description = "Size (GiB) of each GPU instance's encrypted root volume: the AMI, Docker's storage and the multi-GB CUDA image."
  type        = number
  default     = 100

  validation {
    condition     = var.root_volume_size_gb >= 50 && var.root_volume_size_gb <= 16384
    error_message = "root_volume_size_gb must be between 50 and 16384."
  }
}

variable "instance_min_count" {
  description = "Minimum number of GPU instances. 0 lets the capacity provider scale to zero when no task runs (a cold start then waits for an instance)."
  type        = number
  default     = 1

  validation {
    condition     = var.instance_min_count >= 0 && floor(var.instance_min_count) == var.instance_min_count
    error_message = "instance_min_count must be a whole number, 0 or more."
  }
}

variable "instance_max_count" {
  description = "Maximum number of GPU instances the capacity provider may run (bounds cost): at least twice max_tasks, since a release starts the new revision's tasks beside the old ones."
  type        = number
  default     = 6

  validation {
    condition     = var.instance_max_count >= 1 && var.instance_max_count >= var.instance_min_count && floor(var.instance_max_count) == var.instance_max_count
    error_message = "instance_max_count must be a whole number, at least 1 and at least instance_min_count."
  }
}

# ---------------------------------------------------------------------------------------------
# Releases: ECS's deployment strategy (service.tf, README "Releases")
# ---------------------------------------------------------------------------------------------

variable "deployment_strategy" {
  description = "How ECS rolls out a new task definition revision: CANARY (canary_percent of the traffic first, then all of it), LINEAR (linear_step_percent at a time) or ROLLING (tasks replaced in place, no traffic shifting, no bake)."
  type        = string
  default     = "CANARY"

  validation {
    condition     = contains(["CANARY", "LINEAR", "ROLLING"], var.deployment_strategy)
    error_message = "deployment_strategy must be CANARY, LINEAR or ROLLING."
  }
}

variable "canary_percent" {
  description = "CANARY: the percentage of production traffic the new revision takes first, for canary_bake_time_minutes."
  type        = number
  default     = 10

  validation {
    # ECS: multiples of 0.1 from 0.1 to 100.
    condition     = var.canary_percent >= 0.1 && var.canary_percent <= 100 && can(regex("^[0-9]+(\\.[0-9])?$", tostring(var.canary_percent)))
    error_message = "canary_percent must be within 0.1..100, in steps of 0.1."
  }
}

variable "canary_bake_time_minutes" {
  description = "CANARY: minutes the new revision serves canary_percent of the traffic, judged by the release alarms, before it takes all of it."
  type        = number
  default     = 10

  validation {
    # The judges fire after 3 breaching minutes of 5 (monitoring.tf); ECS allows up to 1440.
    condition     = var.canary_bake_time_minutes >= 5 && var.canary_bake_time_minutes <= 1440 && floor(var.canary_bake_time_minutes) == var.canary_bake_time_minutes
    error_message = "canary_bake_time_minutes must be a whole number within 5..1440: the release alarms need 3 breaching minutes of 5 to fire."
  }
}

variable "linear_step_percent" {
  description = "LINEAR: the percentage of production traffic moved to the new revision at each step."
  type        = number
  default     = 25

  validation {
    # ECS: multiples of 0.1 from 3 to 100.
    condition     = var.linear_step_percent >= 3 && var.linear_step_percent <= 100 && can(regex("^[0-9]+(\\.[0-9])?$", tostring(var.linear_step_percent)))
    error_message = "linear_step_percent must be within 3..100, in steps of 0.1."
  }
}

variable "linear_step_bake_time_minutes" {
  description = "LINEAR: minutes between two steps."
  type        = number
  default     = 5

  validation {
    condition     = var.linear_step_bake_time_minutes >= 0 && var.linear_step_bake_time_minutes <= 1440 && floor(var.linear_step_bake_time_minutes) == var.linear_step_bake_time_minutes
    error_message = "linear_step_bake_time_minutes must be a whole number within 0..1440."
  }
}

variable "deployment_bake_time_minutes" {
  description = "CANARY and LINEAR: minutes the old revision keeps running after the new one took all the traffic; until then a rollback only moves the traffic back."
  type        = number
  default     = 10

  validation {
    condition     = var.deployment_bake_time_minutes >= 5 && var.deployment_bake_time_minutes <= 1440 && floor(var.deployment_bake_time_minutes) == var.deployment_bake_time_minutes
    error_message = "deployment_bake_time_minutes must be a whole number within 5..1440: the release alarms need 3 breaching minutes of 5 to fire."
  }
}

# ---------------------------------------------------------------------------------------------
# Service auto scaling
# ---------------------------------------------------------------------------------------------

variable "min_tasks" {
  description = "Minimum (and initial) number of tasks of the service. 2: one task in each of two availability zones (the service spreads them; private_subnet_ids must span two zones), so that an instance or a zone can fail while the other task serves. 1 halves the idle cost (one g4dn.xlarge, README \"Scaling and its cost\") and is down while its only task or zone is."
  type        = number
  default     = 2

  validation {
    condition     = var.min_tasks >= 1 && floor(var.min_tasks) == var.min_tasks
    error_message = "min_tasks must be a whole number, at least 1."
  }
}

variable "max_tasks" {
  description = "Maximum number of tasks the service scales out to (one GPU, so one instance, each): at most half of instance_max_count (a release runs old and new tasks side by side)."
  type        = number
  default     = 3

  validation {
    condition     = var.max_tasks >= var.min_tasks && var.max_tasks * 2 <= var.instance_max_count && floor(var.max_tasks) == var.max_tasks
    error_message = "max_tasks must be a whole number, at least min_tasks and at most half of instance_max_count: each task needs an instance of its own, and a release (canary, linear or rolling at 200 %) starts the new revision's tasks beside the old ones."
  }
}

variable "requests_per_task_target" {
  description = "Requests per task per minute the service scales to keep: the requests to both target groups divided by the service's desired task count (autoscaling.tf). Set it comfortably below what one task sustains (a load test measures that)."
  type        = number
  default     = 600

  validation {
    condition     = var.requests_per_task_target > 0
    error_message = "requests_per_task_target must be positive."
  }
}

variable "scale_out_cooldown_seconds" {
  description = "Seconds after a scale-out before the policy adds tasks again on the same metric (a larger scale-out still happens at once). Longer than the metric's delay: the metric divides by desired tasks, so added tasks count once CloudWatch has the minute; until then its points still show the load per task from before, and a scale-out on them would overshoot. 300 leaves room for up to 4 minutes of delay (README \"Scaling and its cost\")."
  type        = number
  default     = 300

  validation {
    condition     = var.scale_out_cooldown_seconds >= 60 && var.scale_out_cooldown_seconds <= 3600 && floor(var.scale_out_cooldown_seconds) == var.scale_out_cooldown_seconds
    error_message = "scale_out_cooldown_seconds must be a whole number within 60..3600."
  }
}

variable "scale_in_cooldown_seconds" {
  description = "Seconds after a scale-in before the next one. Target tracking already waits for 15 quiet minutes before the first; this spaces further steps (a new GPU task takes minutes to come back)."
  type        = number
  default     = 600

  validation {
    condition     = var.scale_in_cooldown_seconds >= 60 && var.scale_in_cooldown_seconds <= 3600 && floor(var.scale_in_cooldown_seconds) == var.scale_in_cooldown_seconds
    error_message = "scale_in_cooldown_seconds must be a whole number within 60..3600."
  }
}

variable "warm_pool" {
  description = "Keep the instances the group may still add (instance_max_count less the running ones) initialized and stopped in an EC2 warm pool: a scale-out starts one instead of launching a fresh one. A stopped instance costs its root volume only (root_volume_size_gb x the gp3 price, about 8 USD a month at 100 GB)."
  type        = bool
  default     = true
}

variable "target_capacity_percent" {
  description = "The capacity provider's target: the percentage of the GPU instances that tasks use. 100: no running spare instance. Below 100: ceil(tasks x 100 / target) instances, the rest spare and running (a task placed there skips the instance's boot; each costs a whole instance, about 384 USD a month for a g4dn.xlarge). 67 keeps one spare for 2 tasks."
  type        = number
  default     = 100

  validation {
    condition     = var.target_capacity_percent >= 1 && var.target_capacity_percent <= 100 && floor(var.target_capacity_percent) == var.target_capacity_percent
    error_message = "target_capacity_percent must be a whole number within 1..100."
  }
}

# ---------------------------------------------------------------------------------------------
# Logs and the registry
# ---------------------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the service, ECS Exec and WAF log groups, in days (one of CloudWatch's allowed values)."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch's values: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}

variable "ecr_keep_images" {
  description = "Number of most recent tagged images the ECR repository keeps; older tagged images expire (untagged ones after 7 days). Generous on purpose: a task definition revision whose image expired cannot be rolled back to (ecr.tf)."
  type        = number
  default     = 500

  validation {
    condition     = var.ecr_keep_images >= 100 && var.ecr_keep_images <= 10000 && floor(var.ecr_keep_images) == var.ecr_keep_images
    error_message = "ecr_keep_images must be a whole number within 100..10000: images of registered revisions are the way back."
  }
}

variable "ecr_force_delete" {
  description = "Let terraform destroy delete the ECR repository even when it still holds images."
  type        = bool
  default     = false
}

variable "drain_timeout_seconds" {
  description = "After SIGTERM, how long the entrypoint waits at most for busy workers to answer what they hold (README \"Reliability\"); the task's stopTimeout is this plus 15 s."
  type        = number
  default     = 30

  validation {
    # ECS allows a stopTimeout of at most 120 s.
    condition     = var.drain_timeout_seconds >= 5 && var.drain_timeout_seconds <= 105
    error_message = "drain_timeout_seconds must be within 5..105 (stopTimeout = drain + 15 s, at most 120 s)."
  }
}

# ---------------------------------------------------------------------------------------------
# The model store (models.tf) and its operators
# ---------------------------------------------------------------------------------------------

variable "model_operator_principals" {
  description = "IAM principals (role or user ARNs, or an account's root ARN) that may assume the model operators' role, the only writer of the model store. Empty: this account's root, i.e. any IAM principal of this account whose own policy allows sts:AssumeRole on the role."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.model_operator_principals : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/[A-Za-z0-9+=,.@_/-]+|user/[A-Za-z0-9+=,.@_/-]+)$", arn))])
    error_message = "model_operator_principals must be IAM ARNs: arn:aws:iam::ACCOUNT:root, arn:aws:iam::ACCOUNT:role/NAME or arn:aws:iam::ACCOUNT:user/NAME."
  }
}

variable "model_store_noncurrent_days" {
  description = "Days an object of the model store is kept after it was replaced or deleted (versioning), before it expires."
  type        = number
  default     = 90

  validation {
    condition     = var.model_store_noncurrent_days >= 1 && floor(var.model_store_noncurrent_days) == var.model_store_noncurrent_days
    error_message = "model_store_noncurrent_days must be a whole number, at least 1."
  }
}

variable "model_store_access_logs_bucket" {
  description = "Existing S3 bucket for the model store's server access logs (its policy must let logging.s3.amazonaws.com write). Empty: no access logs."
  type        = string
  default     = ""

  validation {
    condition     = var.model_store_access_logs_bucket == "" || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.model_store_access_logs_bucket))
    error_message = "model_store_access_logs_bucket must be empty or an S3 bucket name."
  }
}

variable "model_store_force_destroy" {
  description = "Let terraform destroy delete the model store even when it still holds archives and releases."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Alarms (monitoring.tf)
# ---------------------------------------------------------------------------------------------

variable "alarm_email" {
  description = "An address the alarm topic emails (AWS asks it to confirm first). Empty: subscribe what you use to the topic (output alarm_topic_arn)."
  type        = string
  default     = ""

  validation {
    condition     = var.alarm_email == "" || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", var.alarm_email))
    error_message = "alarm_email must be empty or an email address."
  }
}

variable "alarm_5xx_percent" {
  description = "Alarm when more than this percentage of requests get a 5xx (load balancer or tasks), in 3 of 5 minutes."
  type        = number
  default     = 1

  validation {
    condition     = var.alarm_5xx_percent > 0 && var.alarm_5xx_percent <= 100
    error_message = "alarm_5xx_percent must be within (0, 100]."
  }
}

variable "alarm_model_error_percent" {
  description = "Alarm when more than this percentage of the model's requests fail on the service's side, in 3 of 5 minutes."
  type        = number
  default     = 1

  validation {
    condition     = var.alarm_model_error_percent > 0 && var.alarm_model_error_percent <= 100
    error_message = "alarm_model_error_percent must be within (0, 100]."
  }
}

variable "alarm_p99_response_seconds" {
  description = "Alarm when the p99 of target response time exceeds this many seconds, in 3 of 5 minutes."
  type        = number
  default     = 2

  validation {
    condition     = var.alarm_p99_response_seconds > 0
    error_message = "alarm_p99_response_seconds must be positive."
  }
}

variable "alarm_predict_p99_ms" {
  description = "Alarm when the p99 of the model's forward pass exceeds this many milliseconds, in 3 of 5 minutes."
  type        = number
  default     = 1000

  validation {
    condition     = var.alarm_predict_p99_ms > 0
    error_message = "alarm_predict_p99_ms must be positive."
  }
}

# Batch jobs (batch.tf, docs/batch.md): off unless set.
variable "batch" {
  description = "AWS Batch jobs over S3 (batch.tf): inputs are the s3://bucket/prefix/ locations the jobs may read, output the one they write (each job in its own folder below it); kms_key_arns the keys of those buckets when they are not this deployment's. Spot instances with retries when spot is true. null: no batch resources."
  type = object({
    inputs                = list(string)
    output                = string
    kms_key_arns          = optional(list(string), [])
    spot                  = optional(bool, false)
    instance_types        = optional(list(string), ["g4dn.xlarge"])
    max_vcpus             = optional(number, 16)
    vcpus                 = optional(number, 4)
    memory_mib            = optional(number, 14336)
    attempts              = optional(number, 3)
    child_timeout_seconds = optional(number, 86400)
  })
  default = null

  validation {
    condition = var.batch == null ? true : (
      length(var.batch.inputs) > 0
      && alltrue([for uri in concat(var.batch.inputs, [var.batch.output]) : can(regex("^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", uri))])
    )
    error_message = "batch.inputs (at least one) and batch.output must be s3://BUCKET or s3://BUCKET/PREFIX."
  }
  validation {
    condition     = var.batch == null ? true : var.batch.attempts >= 1 && var.batch.attempts <= 10
    error_message = "batch.attempts must be 1 to 10 (AWS Batch's range)."
  }
  validation {
    condition     = var.batch == null ? true : var.batch.child_timeout_seconds >= 60
    error_message = "batch.child_timeout_seconds must be at least 60 (AWS Batch's minimum)."
  }
  validation {
    condition     = var.batch == null ? true : var.batch.vcpus >= 1 && var.batch.vcpus <= var.batch.max_vcpus
    error_message = "batch.vcpus (one child's) must be at least 1 and at most batch.max_vcpus (the compute environment's)."
  }
}
