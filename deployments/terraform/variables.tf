variable "prefix" {
  description = "Stack prefix: every topic, queue and the bucket are named \"<prefix>-...\". The same value as SORTIE_PREFIX / `sortie --prefix` (pkg/bus Topology.Prefix)."
  type        = string
  default     = "sortie"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,19}$", var.prefix))
    error_message = "The prefix must be 1-20 characters of [a-z0-9-], starting with a letter (pkg/bus Topology.Validate)."
  }
}

variable "region" {
  description = "AWS region of the stack."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Tags added to every resource, besides sortie:stack = prefix."
  type        = map(string)
  default     = {}
}

variable "kms_deletion_window_days" {
  description = "Waiting period before the log bucket's KMS key is deleted after a destroy (7-30 days)."
  type        = number
  default     = 30
}

variable "vpc_id" {
  description = "VPC of the services' tasks (and their security group)."
  type        = string
}

variable "subnet_ids" {
  description = "Subnets of the services' Fargate tasks: private subnets with a NAT or VPC endpoints for SNS, SQS, S3, EC2, CloudWatch, Secrets Manager, ECR and Logs."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Give the tasks public IPs (only for public subnets without a NAT)."
  type        = bool
  default     = false
}

variable "image_repository" {
  description = "Registry path the images are pushed to, without the image name: \"<account>.dkr.ecr.<region>.amazonaws.com\". Each service's image is <repository>/sortie-<service>."
  type        = string
}

variable "image_tag" {
  description = "Tag of every service image (`task images` builds them; the release pipeline pushes them)."
  type        = string
}

variable "image_tags" {
  description = "Per-service image tags overriding image_tag, e.g. { reaper = \"v1.2.1\" }."
  type        = map(string)
  default     = {}
}

variable "max_replicas" {
  description = "Most tasks Application Auto Scaling may run per service (at least 1 always runs)."
  type        = number
  default     = 4
}

variable "max_replicas_per_service" {
  description = "Per-service overrides of max_replicas, e.g. { bootstrapper = 8 }."
  type        = map(number)
  default     = {}
}

variable "target_message_age_seconds" {
  description = "Auto scaling target: the age of the oldest message in a stage's queue that adds tasks when exceeded."
  type        = number
  default     = 60
}

variable "ssh_key_name" {
  description = "EC2 key pair the fleets log in with (the templates' key_name); its private key is read from s3://<prefix>-secrets/keys/<name>.pem (`sortie demo prepare` stores one there). The default is the embedded ops configuration's."
  type        = string
  default     = "sortie-dev"
}

variable "ops_config" {
  description = "The ops configuration (YAML: templates, profiles, recipes). Uploaded to s3://<prefix>-secrets/config/ops.yaml and given to the services as SORTIE_CONFIG; empty: the embedded default."
  type        = string
  default     = ""
}

variable "work_buckets" {
  description = "Buckets jobs may size their work from (the planner lists them) and that the workload on the instances reads, and writes results/ to."
  type        = list(string)
  default     = []
}

variable "work_queues" {
  description = "SQS queues jobs may size their work from (the planner reads their depth) and that the workload on the instances drains."
  type        = list(string)
  default     = []
}

variable "fetch_buckets" {
  description = "Buckets the recipes' fetch steps may read (the bootstrapper presigns objects in them). Never the secrets bucket."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for b in var.fetch_buckets : !endswith(b, "-secrets")])
    error_message = "A recipe may not fetch from a secrets bucket."
  }
}

variable "upstream_principals" {
  description = "ARNs of the principals allowed to assume the upstream role (which may only publish JobSubmitted). Empty: this account's root, so IAM policies in this account decide."
  type        = list(string)
  default     = []
}

variable "upstream_external_id" {
  description = "External id upstream must pass when assuming the upstream role (empty: none required)."
  type        = string
  default     = ""
}

variable "log_retention_days" {
  description = "Retention of the services' CloudWatch log groups."
  type        = number
  default     = 30
}
