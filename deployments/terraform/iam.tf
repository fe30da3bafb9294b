# One IAM role per service (pkg/bus Topology.RoleName), the worker role and instance profile,
# the upstream role, the ECS execution role: each allows exactly what its holder calls,
# scoped to this stack's ARNs. EC2 writes carry tag conditions on sortie:stack; iam:PassRole
# names only the worker role; cloudwatch:PutMetricData only in Sortie's namespace.
#
# The proof: pkg/devstack's end-to-end test records every AWS call each service makes
# (pkg/awsx Recorder) and pkg/iampolicy checks each against these policies as evaluated from
# this file (TestEveryCallIsAllowed); TestTerraformPolicies fails on an Action "*" or an
# unconditioned write on Resource "*".

locals {
  services = ["planner", "provisioner", "bootstrapper", "monitor", "reaper"]

  # Sortie's CloudWatch namespace (pkg/metrics Namespace).
  metrics_namespace = "Sortie"

  ledger_table_arn = "arn:aws:dynamodb:${local.region}:${local.account_id}:table/${var.prefix}-ledger"
  ec2_instances    = "arn:aws:ec2:${local.region}:${local.account_id}:instance/*"
  ec2_volumes      = "arn:aws:ec2:${local.region}:${local.account_id}:volume/*"

  # Queue suffix => the service that reads it ("<service>-<topic>", "<service>-timers"; the
  # monitor reads the EC2 events queue).
  queue_owner = merge(
    { for q, e in local.queues : q => split("-", q)[0] },
    { (local.ec2_events_queue) = "monitor" },
  )

  # pkg/bus Producers, turned around: service => topics it publishes.
  publishes = { for svc in local.services : svc => [for et, ps in local.producers : et if contains(ps, svc)] }

  work_bucket_arns  = [for b in var.work_buckets : "arn:aws:s3:::${b}"]
  work_object_arns  = [for b in var.work_buckets : "arn:aws:s3:::${b}/*"]
  work_result_arns  = [for b in var.work_buckets : "arn:aws:s3:::${b}/results/*"]
  work_queue_arns   = [for q in var.work_queues : "arn:aws:sqs:${local.region}:${local.account_id}:${q}"]
  fetch_object_arns = [for b in var.fetch_buckets : "arn:aws:s3:::${b}/*"]

  upstream_principals = length(var.upstream_principals) > 0 ? var.upstream_principals : ["arn:aws:iam::${local.account_id}:root"]

  # What every service does: read its own queues, dead-letter into their DLQs, publish what it
  # produces, resolve topic ARNs, read the ops configuration, use the ledger.
  common_statements = {
    for svc in local.services : svc => concat(
      [
        {
          Sid      = "ConsumeOwnQueues"
          Effect   = "Allow"
          Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
          Resource = [for q, owner in local.queue_owner : aws_sqs_queue.queue[q].arn if owner == svc]
        },
        {
          Sid      = "DeadLetterOwnQueues"
          Effect   = "Allow"
          Action   = ["sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
          Resource = [for q, owner in local.queue_owner : aws_sqs_queue.dlq[q].arn if owner == svc]
        },
        {
          Sid      = "ResolveTopics"
          Effect   = "Allow"
          Action   = "sns:ListTopics"
          Resource = "*"
        },
        {
          Sid      = "ReadOpsConfig"
          Effect   = "Allow"
          Action   = "s3:GetObject"
          Resource = "${aws_s3_bucket.secrets.arn}/${local.ops_config_path}"
        },
        {
          Sid      = "DecryptSecrets"
          Effect   = "Allow"
          Action   = "kms:Decrypt"
          Resource = aws_kms_key.secrets.arn
        },
        {
          Sid    = "Ledger"
          Effect = "Allow"
          Action = [
            "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem",
            "dynamodb:Query", "dynamodb:ConditionCheckItem",
          ]
          Resource = [local.ledger_table_arn, "${local.ledger_table_arn}/index/*"]
        },
      ],
      [for x in [1] : {
        Sid      = "PublishOwnEvents"
        Effect   = "Allow"
        Action   = "sns:Publish"
        Resource = [for et in local.publishes[svc] : aws_sns_topic.event[et].arn]
      } if length(local.publishes[svc]) > 0],
      [for x in [1] : {
        Sid      = "SendOwnTimers"
        Effect   = "Allow"
        Action   = "sqs:SendMessage"
        Resource = aws_sqs_queue.queue["${svc}-timers"].arn
      } if contains(keys(local.queue_owner), "${svc}-timers")],
    )
  }

  # The login key, for the services that SSH into instances.
  read_login_key = {
    Sid      = "ReadLoginKey"
    Effect   = "Allow"
    Action   = "s3:GetObject"
    Resource = "${aws_s3_bucket.secrets.arn}/${local.ssh_key_object}"
  }

  # Instances that generate their own host key print its fingerprints to the console; the
  # stages that SSH in read them there (templates with host_keys = instance).
  read_own_consoles = {
    Sid       = "ReadOwnConsoles"
    Effect    = "Allow"
    Action    = "ec2:GetConsoleOutput"
    Resource  = local.ec2_instances
    Condition = { StringEquals = { "aws:ResourceTag/sortie:stack" = var.prefix } }
  }

  describe_instances = {
    Sid      = "DescribeInstances"
    Effect   = "Allow"
    Action   = ["ec2:DescribeInstances", "ec2:DescribeInstanceStatus"]
    Resource = "*"
  }

  # Tag writes on this stack's instances only, and only of the tags the service owns (the
  # provisioner tags at launch; the reaper writes no tag).
  tag_own_instances = {
    bootstrapper = ["sortie:stage"]
    monitor      = ["sortie:stage", "sortie:lease-expires"]
  }

  service_statements = {
    planner = concat(
      [for x in [1] : {
        Sid      = "SizeFromWorkQueues"
        Effect   = "Allow"
        Action   = ["sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
        Resource = local.work_queue_arns
      } if length(var.work_queues) > 0],
      [for x in [1] : {
        Sid      = "SizeFromWorkBuckets"
        Effect   = "Allow"
        Action   = "s3:ListBucket"
        Resource = local.work_bucket_arns
      } if length(var.work_buckets) > 0],
    )

    provisioner = [
      local.describe_instances,
      {
        Sid       = "LaunchTaggedInstances"
        Effect    = "Allow"
        Action    = "ec2:RunInstances"
        Resource  = [local.ec2_instances, local.ec2_volumes]
        Condition = { StringEquals = { "aws:RequestTag/sortie:stack" = var.prefix } }
      },
      {
        Sid    = "LaunchFrom"
        Effect = "Allow"
        Action = "ec2:RunInstances"
        Resource = [
          "arn:aws:ec2:${local.region}::image/*",
          "arn:aws:ec2:${local.region}:${local.account_id}:subnet/*",
          "arn:aws:ec2:${local.region}:${local.account_id}:security-group/*",
          "arn:aws:ec2:${local.region}:${local.account_id}:network-interface/*",
          "arn:aws:ec2:${local.region}:${local.account_id}:key-pair/*",
          # A spot launch (a template's spot market) creates a spot instance request.
          "arn:aws:ec2:${local.region}:${local.account_id}:spot-instances-request/*",
        ]
      },
      {
        Sid       = "TagOnLaunch"
        Effect    = "Allow"
        Action    = "ec2:CreateTags"
        Resource  = [local.ec2_instances, local.ec2_volumes]
        Condition = { StringEquals = { "ec2:CreateAction" = "RunInstances", "aws:RequestTag/sortie:stack" = var.prefix } }
      },
      {
        Sid       = "TerminateOwnInstances"
        Effect    = "Allow"
        Action    = "ec2:TerminateInstances"
        Resource  = local.ec2_instances
        Condition = { StringEquals = { "aws:ResourceTag/sortie:stack" = var.prefix } }
      },
      {
        Sid       = "PassWorkerRole"
        Effect    = "Allow"
        Action    = "iam:PassRole"
        Resource  = aws_iam_role.worker.arn
        Condition = { StringEquals = { "iam:PassedToService" = "ec2.amazonaws.com" } }
      },
    ]

    bootstrapper = concat(
      [
        local.describe_instances,
        local.read_login_key,
        local.read_own_consoles,
      ],
      [for x in [1] : {
        Sid      = "PresignRecipeFetches"
        Effect   = "Allow"
        Action   = "s3:GetObject"
        Resource = local.fetch_object_arns
      } if length(var.fetch_buckets) > 0],
    )

    monitor = [
      local.describe_instances,
      local.read_login_key,
      local.read_own_consoles,
      {
        Sid       = "PutSortieMetrics"
        Effect    = "Allow"
        Action    = "cloudwatch:PutMetricData"
        Resource  = "*"
        Condition = { StringEquals = { "cloudwatch:namespace" = local.metrics_namespace } }
      },
      {
        Sid      = "ReadMetrics"
        Effect   = "Allow"
        Action   = "cloudwatch:GetMetricStatistics"
        Resource = "*"
      },
    ]

    reaper = [
      local.describe_instances,
      local.read_login_key,
      local.read_own_consoles,
      {
        # Sortie/JobCost per reaped job, Sortie/ArchiveFailures per unarchived instance.
        Sid       = "PutSortieMetrics"
        Effect    = "Allow"
        Action    = "cloudwatch:PutMetricData"
        Resource  = "*"
        Condition = { StringEquals = { "cloudwatch:namespace" = local.metrics_namespace } }
      },
      {
        Sid       = "TerminateOwnInstances"
        Effect    = "Allow"
        Action    = "ec2:TerminateInstances"
        Resource  = local.ec2_instances
        Condition = { StringEquals = { "aws:ResourceTag/sortie:stack" = var.prefix } }
      },
      {
        Sid      = "ArchiveLogs"
        Effect   = "Allow"
        Action   = ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload"]
        Resource = "${aws_s3_bucket.logs.arn}/logs/*"
      },
      {
        Sid      = "EncryptLogs"
        Effect   = "Allow"
        Action   = ["kms:GenerateDataKey", "kms:Decrypt"]
        Resource = aws_kms_key.logs.arn
      },
    ]
  }

  tag_statements = {
    for svc, keys in local.tag_own_instances : svc => [{
      Sid      = "TagOwnInstances"
      Effect   = "Allow"
      Action   = "ec2:CreateTags"
      Resource = local.ec2_instances
      Condition = {
        StringEquals                = { "aws:ResourceTag/sortie:stack" = var.prefix }
        "ForAllValues:StringEquals" = { "aws:TagKeys" = keys }
      }
    }]
  }

  # The policy document of each service's role.
  service_policies = {
    for svc in local.services : svc => {
      Version   = "2012-10-17"
      Statement = concat(local.common_statements[svc], local.service_statements[svc], lookup(local.tag_statements, svc, []))
    }
  }
}

# --- The services' task roles ------------------------------------------------------------------

resource "aws_iam_role" "service" {
  for_each = toset(local.services)

  name        = "${var.prefix}-${each.key}"
  description = "Sortie ${var.prefix} ${each.key}: ECS task role"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  })
}

resource "aws_iam_role_policy" "service" {
  for_each = toset(local.services)

  name   = "sortie"
  role   = aws_iam_role.service[each.key].name
  policy = jsonencode(local.service_policies[each.key])
}

# --- The worker: the fleets' instance profile ---------------------------------------------------

resource "aws_iam_role" "worker" {
  name        = "${var.prefix}-worker"
  description = "Sortie ${var.prefix} fleet instances: publish TaskReported, read what recipes fetch"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_instance_profile" "worker" {
  name = "${var.prefix}-worker"
  role = aws_iam_role.worker.name
}

resource "aws_iam_role_policy" "worker" {
  name = "sortie"
  role = aws_iam_role.worker.name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [
        {
          Sid      = "ReportTasks"
          Effect   = "Allow"
          Action   = "sns:Publish"
          Resource = aws_sns_topic.event["TaskReported"].arn
        },
        {
          Sid      = "ResolveTopics"
          Effect   = "Allow"
          Action   = "sns:ListTopics"
          Resource = "*"
        },
      ],
      [for x in [1] : {
        Sid      = "FetchRecipeObjects"
        Effect   = "Allow"
        Action   = "s3:GetObject"
        Resource = local.fetch_object_arns
      } if length(var.fetch_buckets) > 0],
    )
  })
}

# The workload's own data, apart from what Sortie itself needs: the work items it reads and
# drains and the results it writes (the demo workload's needs; none when no work bucket or
# queue is given).
resource "aws_iam_role_policy" "worker_workload" {
  count = length(var.work_buckets) + length(var.work_queues) > 0 ? 1 : 0

  name = "workload"
  role = aws_iam_role.worker.name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [for x in [1] : {
        Sid      = "WorkloadReadsWork"
        Effect   = "Allow"
        Action   = "s3:GetObject"
        Resource = local.work_object_arns
      } if length(var.work_buckets) > 0],
      [for x in [1] : {
        Sid      = "WorkloadWritesResults"
        Effect   = "Allow"
        Action   = "s3:PutObject"
        Resource = local.work_result_arns
      } if length(var.work_buckets) > 0],
      [for x in [1] : {
        Sid      = "WorkloadDrainsWorkQueues"
        Effect   = "Allow"
        Action   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueUrl", "sqs:GetQueueAttributes"]
        Resource = local.work_queue_arns
      } if length(var.work_queues) > 0],
    )
  })
}

# --- Upstream: may publish JobSubmitted, nothing else ---------------------------------------------

resource "aws_iam_role" "upstream" {
  name        = "${var.prefix}-upstream"
  description = "Sortie ${var.prefix}: assumed by upstream to submit jobs"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = concat(
      [for x in [1] : {
        Effect    = "Allow"
        Principal = { AWS = local.upstream_principals }
        Action    = "sts:AssumeRole"
      } if var.upstream_external_id == ""],
      [for x in [1] : {
        Effect    = "Allow"
        Principal = { AWS = local.upstream_principals }
        Action    = "sts:AssumeRole"
        Condition = { StringEquals = { "sts:ExternalId" = var.upstream_external_id } }
      } if var.upstream_external_id != ""],
    )
  })
}

resource "aws_iam_role_policy" "upstream" {
  name = "sortie"
  role = aws_iam_role.upstream.name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid      = "SubmitJobs"
      Effect   = "Allow"
      Action   = "sns:Publish"
      Resource = aws_sns_topic.event["JobSubmitted"].arn
    }]
  })
}

# --- ECS task execution role: image pulls, logs, the host-key secret ------------------------------

resource "aws_iam_role" "execution" {
  name        = "${var.prefix}-execution"
  description = "Sortie ${var.prefix}: ECS task execution role"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ecs-tasks.amazonaws.com" }
      Action    = "sts:AssumeRole"
      Condition = { StringEquals = { "aws:SourceAccount" = local.account_id } }
    }]
  })
}

resource "aws_iam_role_policy" "execution" {
  name = "sortie"
  role = aws_iam_role.execution.name
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "RegistryLogin"
        Effect   = "Allow"
        Action   = "ecr:GetAuthorizationToken"
        Resource = "*"
      },
      {
        Sid      = "PullImages"
        Effect   = "Allow"
        Action   = ["ecr:BatchCheckLayerAvailability", "ecr:GetDownloadUrlForLayer", "ecr:BatchGetImage"]
        Resource = "arn:aws:ecr:${local.region}:${local.account_id}:repository/sortie-*"
      },
      {
        Sid      = "WriteLogs"
        Effect   = "Allow"
        Action   = ["logs:CreateLogStream", "logs:PutLogEvents"]
        Resource = [for g in aws_cloudwatch_log_group.service : "${g.arn}:*"]
      },
      {
        Sid      = "ReadHostKeySecret"
        Effect   = "Allow"
        Action   = "secretsmanager:GetSecretValue"
        Resource = aws_secretsmanager_secret.hostkey.arn
      },
      {
        Sid      = "DecryptHostKeySecret"
        Effect   = "Allow"
        Action   = "kms:Decrypt"
        Resource = aws_kms_key.secrets.arn
      },
    ]
  })
}
