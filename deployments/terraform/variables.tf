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
