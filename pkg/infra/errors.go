package infra

import "github.com/sortie-fleet/sortie/pkg/awsx"

// Not-found errors are classified by awsx.IsNotFound, by code: kumo answers a missing queue
// with the legacy AWS.SimpleQueueService.NonExistentQueue, which the SDK does not map to
// *types.QueueDoesNotExist, and HeadBucket's 404 has no body, only the code NotFound.

// isUnset reports whether err says a bucket has no configuration of the asked kind yet.
func isUnset(err error) bool {
	switch awsx.ErrorCode(err) {
	case "NoSuchBucketPolicy", "NoSuchPublicAccessBlockConfiguration",
		"ServerSideEncryptionConfigurationNotFoundError":
		return true
	}
	return false
}

// isQueueExists reports a CreateQueue that lost to an existing queue with other attributes
// (AWS's query protocol says QueueAlreadyExists, its JSON protocol QueueNameExists).
func isQueueExists(err error) bool {
	switch awsx.ErrorCode(err) {
	case "QueueAlreadyExists", "QueueNameExists":
		return true
	}
	return false
}
