# The five services on ECS Fargate: one cluster (Topology.ClusterName), per service a log
# group (Topology.LogGroupName), a task definition (task role Topology.RoleName, the
# execution role), a service, and Application Auto Scaling on the age of the oldest message
# in the queues the service consumes (at least 1 task, at most max_replicas).
#
# The images hold only the static binary at /<service> (deployments/images, `task images`):
# no shell, no curl. The container health check runs the binary itself with the argument
# `healthcheck`, which asks http://127.0.0.1<SORTIE_HTTP_ADDR>/healthz and exits 0 or 1.

locals {
  cluster   = var.prefix
  http_port = 8080

  # How long a service drains after SIGTERM (pkg/bus DefaultCloseTimeout, 30 s): ECS waits
  # that long and a little more before SIGKILL.
  drain_seconds = 30
  stop_timeout  = local.drain_seconds + 10

  # Task sizes (Fargate cpu units / MiB).
  task_size = {
    planner      = { cpu = 256, memory = 512 }
    provisioner  = { cpu = 256, memory = 512 }
    bootstrapper = { cpu = 512, memory = 1024 }
    monitor      = { cpu = 256, memory = 512 }
    reaper       = { cpu = 512, memory = 1024 }
  }

  # Environment of every service; the SSH services also get SORTIE_SSH_KEY.
  base_env = concat(
    [
      { name = "SORTIE_PREFIX", value = var.prefix },
      { name = "AWS_REGION", value = local.region },
      { name = "SORTIE_HTTP_ADDR", value = ":${local.http_port}" },
    ],
    [for x in [1] : { name = "SORTIE_CONFIG", value = "s3://${local.secrets_bucket}/${local.ops_config_path}" } if var.ops_config != ""],
  )
  ssh_env = [{ name = "SORTIE_SSH_KEY", value = "s3://${local.secrets_bucket}/${local.ssh_key_object}" }]
  service_env = {
    planner      = local.base_env
    provisioner  = local.base_env
    bootstrapper = concat(local.base_env, local.ssh_env)
    monitor      = concat(local.base_env, local.ssh_env)
    reaper       = concat(local.base_env, local.ssh_env, [{ name = "SORTIE_LOG_KMS_KEY_ID", value = aws_kms_key.logs.arn }])
  }
  # Secrets ECS reads with the execution role and hands over as environment variables.
  service_secrets = {
    planner      = []
    provisioner  = [{ name = "SORTIE_HOSTKEY_SECRET", valueFrom = aws_secretsmanager_secret.hostkey.arn }]
    bootstrapper = []
    monitor      = []
    reaper       = []
  }
}

resource "aws_ecs_cluster" "sortie" {
  name = local.cluster

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "service" {
  for_each = toset(local.services)

  name              = "/${var.prefix}/${each.key}"
  retention_in_days = var.log_retention_days
}

resource "aws_security_group" "service" {
  name        = "${var.prefix}-services"
  description = "Sortie ${var.prefix} services: outbound only (AWS APIs, SSH to the fleets)"
  vpc_id      = var.vpc_id

  egress {
    description = "AWS APIs over TLS and SSH to the fleets"
    from_port   = 0
    to_port     = 0
    protocol    = "-1"
    cidr_blocks = ["0.0.0.0/0"]
  }
}

resource "aws_ecs_task_definition" "service" {
  for_each = toset(local.services)

  family                   = "${var.prefix}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = local.task_size[each.key].cpu
  memory                   = local.task_size[each.key].memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.service[each.key].arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([{
    name                   = each.key
    image                  = "${var.image_repository}/sortie-${each.key}:${lookup(var.image_tags, each.key, var.image_tag)}"
    essential              = true
    readonlyRootFilesystem = true
    user                   = "65532:65532"
    stopTimeout            = local.stop_timeout
    environment            = local.service_env[each.key]
    secrets                = local.service_secrets[each.key]
    portMappings           = [{ containerPort = local.http_port, protocol = "tcp" }]
    healthCheck = {
      command     = ["CMD", "/${each.key}", "healthcheck"]
      interval    = 30
      timeout     = 5
      retries     = 3
      startPeriod = 30
    }
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.service[each.key].name
        awslogs-region        = local.region
        awslogs-stream-prefix = each.key
      }
    }
  }])
}

resource "aws_ecs_service" "service" {
  for_each = toset(local.services)

  name            = each.key
  cluster         = aws_ecs_cluster.sortie.id
  task_definition = aws_ecs_task_definition.service[each.key].arn
  launch_type     = "FARGATE"
  desired_count   = 1

  # Rolling updates start the new task before stopping the old one; the old one drains.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.service.id]
    assign_public_ip = var.assign_public_ip
  }

  # Auto scaling owns the task count after creation.
  lifecycle {
    ignore_changes = [desired_count]
  }
}

# --- Auto scaling on the stage's queues ---------------------------------------------------------

resource "aws_appautoscaling_target" "service" {
  for_each = toset(local.services)

  service_namespace  = "ecs"
  scalable_dimension = "ecs:service:DesiredCount"
  resource_id        = "service/${aws_ecs_cluster.sortie.name}/${aws_ecs_service.service[each.key].name}"
  min_capacity       = 1
  max_capacity       = lookup(var.max_replicas_per_service, each.key, var.max_replicas)
}

# One target-tracking policy per consumed queue: a stage scales out when messages wait longer
# than target_message_age_seconds in any of its queues, and back in when they do not.
resource "aws_appautoscaling_policy" "queue_age" {
  for_each = local.subscriptions

  name               = "${var.prefix}-${each.key}-age"
  policy_type        = "TargetTrackingScaling"
  service_namespace  = aws_appautoscaling_target.service[local.queue_owner[each.key]].service_namespace
  scalable_dimension = aws_appautoscaling_target.service[local.queue_owner[each.key]].scalable_dimension
  resource_id        = aws_appautoscaling_target.service[local.queue_owner[each.key]].resource_id

  target_tracking_scaling_policy_configuration {
    target_value       = var.target_message_age_seconds
    scale_in_cooldown  = 300
    scale_out_cooldown = 60

    customized_metric_specification {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateAgeOfOldestMessage"
      statistic   = "Maximum"

      dimensions {
        name  = "QueueName"
        value = aws_sqs_queue.queue[each.key].name
      }
    }
  }
}
