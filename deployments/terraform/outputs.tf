output "topic_arns" {
  description = "SNS topic ARN per event type."
  value       = { for event, t in aws_sns_topic.event : event => t.arn }
}

output "queue_urls" {
  description = "SQS queue URL per queue name suffix (\"<service>-<topic>\", \"<service>-timers\")."
  value       = { for q, r in aws_sqs_queue.queue : q => r.id }
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
