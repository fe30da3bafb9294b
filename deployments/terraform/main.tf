# Sortie's messaging and log archive for production: one SNS topic per event type, one SQS
# queue per (topic, consuming service) with its own dead-letter queue, the services' timer
# queues, and the SSE-KMS log bucket. `sortie infra up` (pkg/infra) creates the same set on
# LocalStack/kumo; pkg/infra's TestTerraformMatchesGenerators evaluates this file and
# fails when the two disagree on a name, a queue setting or a policy statement.

terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0, < 7.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, { "sortie:stack" = var.prefix })
  }
}

locals {
  # Event type => topic name suffix (pkg/bus EventTypes, TopicName).
  topics = {
    JobSubmitted      = "job-submitted"
    FleetPlanned      = "fleet-planned"
    FleetLaunched     = "fleet-launched"
    FleetBootstrapped = "fleet-bootstrapped"
    TaskReported      = "task-reported"
    JobFinished       = "job-finished"
    FleetTerminated   = "fleet-terminated"
    InstanceLost      = "instance-lost"
  }

  # Queue name suffix "<service>-<topic suffix>" => the event type it consumes
  # (pkg/bus Consumers, QueueName). FleetTerminated has no service consumer.
  subscriptions = {
    "planner-job-submitted"       = "JobSubmitted"
    "provisioner-fleet-planned"   = "FleetPlanned"
    "bootstrapper-fleet-launched" = "FleetLaunched"
    "monitor-fleet-bootstrapped"  = "FleetBootstrapped"
    "monitor-task-reported"       = "TaskReported"
    "reaper-job-finished"         = "JobFinished"
    "planner-instance-lost"       = "InstanceLost"
    "reaper-instance-lost"        = "InstanceLost"
  }

  # Services that send themselves delayed messages (pkg/bus TimerServices, TimerQueueName).
  timer_queues = ["monitor-timers", "reaper-timers"]

  # The queue EventBridge delivers EC2's notices to (pkg/bus EC2EventsQueueName); the
  # monitor reads it.
  ec2_events_queue = "ec2-events"

  # Every queue that gets a DLQ and a redrive policy: the consuming queues, the timer queues
  # and the EC2 events queue.
  queues = merge(
    { for q, event in local.subscriptions : q => event },
    { for q in local.timer_queues : q => "" },
    { (local.ec2_events_queue) = "" },
  )

  # pkg/bus MaxReceiveCount and pkg/infra's queue settings.
  max_receive_count         = 5
  visibility_timeout        = 60      # seconds
  queue_retention_seconds   = 345600  # 4 days
  dlq_retention_seconds     = 1209600 # 14 days, the maximum
  receive_wait_time_seconds = 20      # long polling

  bucket = "${var.prefix}-logs"
}

# --- SNS topics -----------------------------------------------------------------------------

resource "aws_sns_topic" "event" {
  for_each = local.topics

  name = "${var.prefix}-${each.value}"
}

# --- SQS queues, DLQs, redrive ---------------------------------------------------------------

resource "aws_sqs_queue" "dlq" {
  for_each = local.queues

  name                       = "${var.prefix}-${each.key}-dlq"
  visibility_timeout_seconds = local.visibility_timeout
  message_retention_seconds  = local.dlq_retention_seconds
  receive_wait_time_seconds  = local.receive_wait_time_seconds
  sqs_managed_sse_enabled    = true
}

resource "aws_sqs_queue" "queue" {
  for_each = local.queues

  name                       = "${var.prefix}-${each.key}"
  visibility_timeout_seconds = local.visibility_timeout
  message_retention_seconds  = local.queue_retention_seconds
  receive_wait_time_seconds  = local.receive_wait_time_seconds
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq[each.key].arn
    maxReceiveCount     = local.max_receive_count
  })
}

# --- Topic -> queue wiring --------------------------------------------------------------------

resource "aws_sqs_queue_policy" "from_topic" {
  for_each = local.subscriptions

  queue_url = aws_sqs_queue.queue[each.key].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AllowTopicSendMessage"
        Effect    = "Allow"
        Principal = { Service = "sns.amazonaws.com" }
        Action    = "sqs:SendMessage"
        Resource  = aws_sqs_queue.queue[each.key].arn
        Condition = { ArnEquals = { "aws:SourceArn" = aws_sns_topic.event[each.value].arn } }
      },
    ]
  })
}

resource "aws_sns_topic_subscription" "queue" {
  for_each = local.subscriptions

  topic_arn            = aws_sns_topic.event[each.value].arn
  protocol             = "sqs"
  endpoint             = aws_sqs_queue.queue[each.key].arn
  raw_message_delivery = true

  # The queue must accept the topic's messages before the first one is sent.
  depends_on = [aws_sqs_queue_policy.from_topic]
}

# --- EC2's notices: EventBridge -> the EC2 events queue ------------------------------------------
#
# Spot Instance Interruption Warnings and instance state changes of the account, on the
# default event bus, go to the EC2 events queue; the monitor reads it (iam.tf) and acts on
# the instances of this stack's running jobs. `sortie infra up` creates the same (pkg/infra,
# target id EC2EventsTargetID); TestTerraformEC2Events compares the pattern with
# pkg/ec2events Pattern and the names with bus.Topology.

resource "aws_cloudwatch_event_rule" "ec2_events" {
  name        = "${var.prefix}-ec2-events"
  description = "Sortie ${var.prefix}: EC2 spot interruption warnings and instance state changes to ${aws_sqs_queue.queue[local.ec2_events_queue].name}"
  event_pattern = jsonencode({
    source        = ["aws.ec2"]
    "detail-type" = ["EC2 Spot Instance Interruption Warning", "EC2 Instance State-change Notification"]
  })
}

resource "aws_cloudwatch_event_target" "ec2_events" {
  rule      = aws_cloudwatch_event_rule.ec2_events.name
  target_id = "sortie-ec2-events"
  arn       = aws_sqs_queue.queue[local.ec2_events_queue].arn
}

# Only EventBridge, and only for this rule, may send to the queue (pkg/infra RuleQueuePolicy).
resource "aws_sqs_queue_policy" "from_rule" {
  queue_url = aws_sqs_queue.queue[local.ec2_events_queue].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AllowRuleSendMessage"
        Effect    = "Allow"
        Principal = { Service = "events.amazonaws.com" }
        Action    = "sqs:SendMessage"
        Resource  = aws_sqs_queue.queue[local.ec2_events_queue].arn
        Condition = { ArnEquals = { "aws:SourceArn" = aws_cloudwatch_event_rule.ec2_events.arn } }
      },
    ]
  })
}

# --- Log bucket ----------------------------------------------------------------------------------

resource "aws_kms_key" "logs" {
  description             = "Sortie ${var.prefix} log archive (S3 SSE-KMS)"
  enable_key_rotation     = true
  deletion_window_in_days = var.kms_deletion_window_days
}

resource "aws_kms_alias" "logs" {
  name          = "alias/${var.prefix}-logs"
  target_key_id = aws_kms_key.logs.key_id
}

resource "aws_s3_bucket" "logs" {
  bucket = local.bucket

  # Archived logs are evidence: destroy fails on a non-empty bucket, as `sortie infra down`
  # keeps one unless told --empty-bucket.
  force_destroy = false
}

# Both of the stack's buckets (logs here, secrets in secrets.tf) are hardened alike: SSE-KMS
# with their own key, no public access, TLS only and SSE-KMS uploads only.
locals {
  hardened_buckets = {
    logs    = { id = aws_s3_bucket.logs.id, arn = aws_s3_bucket.logs.arn, kms_key_arn = aws_kms_key.logs.arn }
    secrets = { id = aws_s3_bucket.secrets.id, arn = aws_s3_bucket.secrets.arn, kms_key_arn = aws_kms_key.secrets.arn }
  }
}

# Stacks applied before the buckets shared these resources keep them: moved, not replaced.
moved {
  from = aws_s3_bucket_server_side_encryption_configuration.logs
  to   = aws_s3_bucket_server_side_encryption_configuration.hardened["logs"]
}

moved {
  from = aws_s3_bucket_server_side_encryption_configuration.secrets
  to   = aws_s3_bucket_server_side_encryption_configuration.hardened["secrets"]
}

moved {
  from = aws_s3_bucket_public_access_block.logs
  to   = aws_s3_bucket_public_access_block.hardened["logs"]
}

moved {
  from = aws_s3_bucket_public_access_block.secrets
  to   = aws_s3_bucket_public_access_block.hardened["secrets"]
}

moved {
  from = aws_s3_bucket_policy.logs
  to   = aws_s3_bucket_policy.hardened["logs"]
}

moved {
  from = aws_s3_bucket_policy.secrets
  to   = aws_s3_bucket_policy.hardened["secrets"]
}

resource "aws_s3_bucket_server_side_encryption_configuration" "hardened" {
  for_each = local.hardened_buckets
  bucket   = each.value.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = each.value.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_public_access_block" "hardened" {
  for_each = local.hardened_buckets
  bucket   = each.value.id

  block_public_acls       = true
  ignore_public_acls      = true
  block_public_policy     = true
  restrict_public_buckets = true
}

# Deny plain HTTP, and uploads that do not ask for SSE-KMS (wrong header, or none).
# The statements and Sids are pkg/infra BucketPolicy's.
resource "aws_s3_bucket_policy" "hardened" {
  for_each = local.hardened_buckets
  bucket   = each.value.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "DenyInsecureTransport"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:*"
        Resource  = [each.value.arn, "${each.value.arn}/*"]
        Condition = { Bool = { "aws:SecureTransport" = "false" } }
      },
      {
        Sid       = "DenyIncorrectEncryptionHeader"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = "${each.value.arn}/*"
        Condition = { StringNotEquals = { "s3:x-amz-server-side-encryption" = "aws:kms" } }
      },
      {
        Sid       = "DenyUnencryptedObjectUploads"
        Effect    = "Deny"
        Principal = "*"
        Action    = "s3:PutObject"
        Resource  = "${each.value.arn}/*"
        Condition = { Null = { "s3:x-amz-server-side-encryption" = "true" } }
      },
    ]
  })

  # S3 rejects a bucket policy while the public access block is being changed.
  depends_on = [aws_s3_bucket_public_access_block.hardened]
}

# --- Only producers publish -------------------------------------------------------------------
#
# Each topic's policy lets only its producing role publish (pkg/bus Producers: the planner
# FleetPlanned, ..., the upstream role JobSubmitted, the worker role TaskReported) and denies
# sns:Publish to every other principal, including this account's administrators' roles.
# pkg/infra TopicPolicy generates the same document (the topic ARN's region a wildcard) for
# `infra up` and `sortie audit`; TestTerraformTopicPolicies compares them.

data "aws_caller_identity" "current" {}

data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  region     = data.aws_region.current.name

  # Event type => the roles that publish it (pkg/bus Producers).
  producers = {
    JobSubmitted      = ["upstream"]
    FleetPlanned      = ["planner"]
    FleetLaunched     = ["provisioner"]
    FleetBootstrapped = ["bootstrapper"]
    TaskReported      = ["worker"]
    JobFinished       = ["monitor"]
    InstanceLost      = ["monitor"]
    FleetTerminated   = ["reaper", "planner", "provisioner", "bootstrapper", "monitor"] # any stage ends a job it rejects
  }

  # Producer => its role's ARN (built from names so topics and roles need no cycle).
  producer_role_arns = {
    for p in ["upstream", "worker", "planner", "provisioner", "bootstrapper", "monitor", "reaper"] :
    p => "arn:aws:iam::${local.account_id}:role/${var.prefix}-${p}"
  }
}

resource "aws_sns_topic_policy" "producers" {
  for_each = local.topics

  arn = aws_sns_topic.event[each.key].arn
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid       = "AllowProducersPublish"
        Effect    = "Allow"
        Principal = { AWS = [for p in local.producers[each.key] : local.producer_role_arns[p]] }
        Action    = "sns:Publish"
        Resource  = "arn:aws:sns:*:${local.account_id}:${var.prefix}-${each.value}"
      },
      {
        Sid       = "DenyPublishByOthers"
        Effect    = "Deny"
        Principal = "*"
        Action    = "sns:Publish"
        Resource  = "arn:aws:sns:*:${local.account_id}:${var.prefix}-${each.value}"
        Condition = { ArnNotEquals = { "aws:PrincipalArn" = [for p in local.producers[each.key] : local.producer_role_arns[p]] } }
      },
    ]
  })

  # SNS refuses a policy naming a role that does not exist yet.
  depends_on = [aws_iam_role.service, aws_iam_role.worker, aws_iam_role.upstream]
}
