output "topic_arns" {
  description = "SNS topic ARN per event type."
  value       = { for event, t in aws_sns_topic.event : event => t.arn }
}

output "queue_urls" {
  description = "SQS queue URL per queue name suffix (\"<service>-<topic>\", \"<service>-timers\", \"ec2-events\")."
  value       = { for q, r in aws_sqs_queue.queue : q => r.id }
}

output "ec2_events_queue_url" {
  description = "URL of the queue EventBridge delivers EC2's spot interruption warnings and instance state changes to (the monitor reads it)."
  value       = aws_sqs_queue.queue[local.ec2_events_queue].id
}

output "ec2_events_rule_arn" {
  description = "ARN of the EventBridge rule routing EC2's notices to the EC2 events queue."
  value       = aws_cloudwatch_event_rule.ec2_events.arn
}

output "dlq_urls" {
  description = "Dead-letter queue URL per queue name suffix."
  value       = { for q, r in aws_sqs_queue.dlq : q => r.id }
}

output "log_bucket" {
  description = "Name of the log archive bucket."
  value       = aws_s3_bucket.logs.bucket
}

output "log_kms_key_arn" {
  description = "ARN of the KMS key that encrypts the log bucket; give the reaper kms:GenerateDataKey on it."
  value       = aws_kms_key.logs.arn
}

output "log_kms_alias" {
  description = "Alias of the log bucket's KMS key."
  value       = aws_kms_alias.logs.name
}

output "job_submitted_topic_arn" {
  description = "The topic upstream publishes JobSubmitted to."
  value       = aws_sns_topic.event["JobSubmitted"].arn
}

output "fleet_terminated_topic_arn" {
  description = "The topic upstream subscribes to for every job's terminal event."
  value       = aws_sns_topic.event["FleetTerminated"].arn
}

output "upstream_role_arn" {
  description = "The role upstream assumes to publish JobSubmitted (and nothing else)."
  value       = aws_iam_role.upstream.arn
}

output "worker_instance_profile" {
  description = "Instance profile the fleet templates name (instance_profile in the ops configuration)."
  value       = aws_iam_instance_profile.worker.name
}

output "secrets_bucket" {
  description = "The secrets bucket: keys/<name>.pem (the fleets' login key), config/ops.yaml."
  value       = aws_s3_bucket.secrets.bucket
}

output "hostkey_secret_arn" {
  description = "Secrets Manager secret holding SORTIE_HOSTKEY_SECRET."
  value       = aws_secretsmanager_secret.hostkey.arn
}

output "cluster_name" {
  description = "The ECS cluster running the services."
  value       = aws_ecs_cluster.sortie.name
}

output "service_role_arns" {
  description = "IAM task role ARN per service."
  value       = { for s, r in aws_iam_role.service : s => r.arn }
}
